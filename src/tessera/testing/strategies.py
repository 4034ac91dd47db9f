"""Hypothesis strategies for Tessera's own values (needs ``hypothesis``: the dev extra)."""

from __future__ import annotations

from hypothesis import strategies as st

from tessera.protocol.timers import AuditDue, CommitDue, ReportDue, RoundDeadline, Timer

rounds = st.integers(0, 10**9)

#: Every kind of timer a role machine sets.
timers: st.SearchStrategy[Timer] = st.one_of(
    st.builds(RoundDeadline, round=rounds),
    st.builds(CommitDue, round=rounds, level=st.integers(0, 64), final=st.booleans()),
    st.builds(AuditDue, round=rounds),
    st.builds(
        ReportDue,
        round=rounds,
        group=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        position=st.integers(0, 1000),
    ),
)
