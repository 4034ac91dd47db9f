"""MailSignal wakes only the long polls of the mail's recipients."""

from __future__ import annotations

import asyncio
import threading

from tessera.coordinator.service import MailSignal


def test_notify_wakes_only_the_recipients_polls() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        signal = MailSignal()
        loop = asyncio.get_running_loop()
        signal.bind(loop)
        for_a, for_b = signal.event_for("a"), signal.event_for("b")
        assert for_a is not None and for_b is not None
        threading.Thread(target=signal.notify, args=(["b"],)).start()  # from another thread
        start = loop.time()
        await signal.wait(for_b, 5.0)
        woke_after = loop.time() - start
        await asyncio.sleep(0.05)
        return for_a.is_set(), for_b.is_set(), woke_after

    a_set, b_set, woke_after = asyncio.run(scenario())
    assert b_set and not a_set
    assert woke_after < 4.0  # woken by the notification, not by the 5 s timeout


def test_mail_stored_between_event_and_read_is_not_missed() -> None:
    async def scenario() -> bool:
        signal = MailSignal()
        signal.bind(asyncio.get_running_loop())
        event = signal.event_for("a")  # a poll takes its event, then reads the store...
        signal.notify(["a"])  # ...while mail for it is stored
        await signal.wait(event, 5.0)
        return event is not None and event.is_set()

    assert asyncio.run(scenario())


def test_unbound_signal_waits_briefly_and_never_fails() -> None:
    signal = MailSignal()
    assert signal.event_for("a") is None
    signal.notify(["a"])
    asyncio.run(signal.wait(None, 0.01))
