"""When the network test may skip: only where user namespaces are missing, and it says so."""

from __future__ import annotations

import pytest

from .sandbox_kit import isolation_verdict, require_isolation

NO_UNSHARE = "the unshare command (util-linux) is not installed"


@pytest.mark.parametrize("ci", [False, True])
def test_without_user_namespaces_it_skips_naming_what_is_missing(ci: bool) -> None:
    verdict, reason = isolation_verdict(problem=NO_UNSHARE, isolated=False, ci=ci)
    assert verdict == "skip"
    assert reason.startswith("unprivileged user namespaces are unavailable")
    assert reason.endswith(NO_UNSHARE)
    with pytest.raises(pytest.skip.Exception, match="user namespaces are unavailable"):
        require_isolation(problem=NO_UNSHARE, isolated=False, ci=ci)


def test_with_user_namespaces_an_unisolated_sandbox_fails_under_ci() -> None:
    assert isolation_verdict(problem="", isolated=False, ci=True)[0] == "fail"
    with pytest.raises(pytest.fail.Exception, match="CI=true: user namespaces work here"):
        require_isolation(problem="", isolated=False, ci=True)


def test_with_user_namespaces_an_unisolated_sandbox_skips_outside_ci() -> None:
    verdict, reason = isolation_verdict(problem="", isolated=False, ci=False)
    assert verdict == "skip"
    assert "started without network isolation" in reason


@pytest.mark.parametrize("ci", [False, True])
def test_an_isolated_sandbox_runs_the_test(ci: bool) -> None:
    assert isolation_verdict(problem="", isolated=True, ci=ci) == ("run", "")
