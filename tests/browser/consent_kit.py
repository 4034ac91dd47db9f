"""What the consent-page tests share: a deployment's AI provider's view of the
coordinator, a user granting and revoking consent in the browser, and a ``tessera up``
whose nodes ask their users (``UpRun``: its page links and its process, for tests
that look at more pages of the same deployment)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tessera.runtime.transport.client import CoordinatorClient
from tessera.runtime.transport.tls import client_ssl_context
from tessera.storage.keyfile import load_keys

T = TypeVar("T")
LINK = re.compile(r"consent page of (\S+): (http://127\.0\.0\.1:\d+/login\?key=[\w-]+)")


def ai_provider_client(out: Path) -> CoordinatorClient:
    """The deployment's AI provider's signed client: it may read its job's full status."""
    url = (out / "run" / "coordinator.url").read_text().strip()
    ca = out / "pki" / "ca.pem"
    return CoordinatorClient(
        url,
        verify=client_ssl_context(ca) if ca.exists() else True,
        keys=load_keys(out / "keys" / "ai-provider.key", warn_clear=False),
        patience=10.0,
    )


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """``probe()``'s first truthy answer; AssertionError naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < end, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.25)


def open_job(page: Any, login: str, job_id: str) -> str:
    """Log in with the link, open the job from the list; the digest the page shows."""
    page.goto(login)
    assert (
        page.url == login.split("/login", maxsplit=1)[0] + "/"
    )  # redirected: the key left the bar
    page.click(f"a[href='/jobs/{job_id}']")
    page.wait_for_selector("#digest")
    return str(page.inner_text("#digest")).strip()


def grant(page: Any) -> None:
    page.click("#grant")
    page.wait_for_selector("#notice")
    assert "granted" in page.inner_text("#notice")
    assert page.inner_text("#yours") == "granted"


def revoke(page: Any) -> None:
    page.click("#revoke")
    page.wait_for_selector("#notice")
    assert "revoked" in page.inner_text("#notice")
    assert page.inner_text("#yours") == "revoked"


@dataclass
class UpRun:
    """A ``tessera up`` in a subprocess; its stderr is read as it comes."""

    proc: subprocess.Popen[str]
    out: Path
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)

        threading.Thread(target=drain, daemon=True).start()

    @classmethod
    def start(cls, config: Path, out: Path, *args: str) -> UpRun:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "up", str(config), "--out", str(out), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        return cls(proc, out)

    def said(self) -> str:
        return "".join(self.lines)

    def pages(self, n: int, timeout: float = 300.0) -> dict[str, str]:
        """The first ``n`` consent pages' login links, by node, as ``up`` prints them."""

        def found() -> dict[str, str] | None:
            links = dict(LINK.findall(" ".join(self.said().split())))
            if self.proc.poll() is not None and len(links) < n:
                raise AssertionError(f"tessera up ended:\n{self.said()[-3000:]}")
            return links if len(links) >= n else None

        return wait_for(f"{n} consent page link(s)", found, timeout)

    def job_id(self, client: CoordinatorClient) -> str:
        def found() -> str | None:
            jobs = client.jobs()
            return str(jobs[0]["job_id"]) if jobs else None

        return wait_for("the submitted job", found, 120.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
