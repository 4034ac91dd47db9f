"""The worker's syscall allow-list (seccomp-bpf through libseccomp).

Theory of operation. The worker loads this filter itself, after its imports
and before it reads the first untrusted frame, so the list holds only what a
running Python and torch need to train: memory, files it may already see
(bubblewrap decides which), threads, time, signals, its own limits. Anything
else fails with EPERM rather than killing the worker, so an unexpected call
deep in a library is an error the parent hears about, not a silent death.

- No new processes: ``clone`` only with ``CLONE_THREAD`` (a thread); ``fork``,
  ``vfork`` and ``execve`` are absent; ``clone3`` answers ENOSYS, since its
  flags sit in memory a filter cannot read, and glibc then falls back to
  ``clone``.
- No sockets at all (``socket`` is absent): the network namespace already
  has nothing to reach, and this holds where namespaces are unavailable.
- No ptrace, mount, unshare/setns, bpf, perf, keyrings, io_uring,
  userfaultfd, module or reboot calls; ``prlimit64`` only on itself.

libseccomp (the library systemd, Flatpak and container runtimes use) builds
the BPF program and rejects other architectures' syscall numbers (the x32 and
i386 entry points a hand-written filter often forgets); ``pyseccomp`` is a
thin ctypes binding to it, with the same API as libseccomp's own bindings.
"""

from __future__ import annotations

import errno

CLONE_THREAD = 0x00010000
_GROUPS = {
    "memory": "brk mmap munmap mremap mprotect madvise mbind get_mempolicy set_mempolicy "
    "membarrier",
    "files it can already see, and its own descriptors": "read write readv writev pread64 "
    "pwrite64 lseek close close_range dup dup2 dup3 fcntl ioctl open openat openat2 stat fstat "
    "lstat newfstatat statx statfs fstatfs access faccessat faccessat2 readlink readlinkat "
    "getdents64 getcwd mkdir mkdirat fadvise64 poll ppoll select pselect6 epoll_create1 "
    "epoll_ctl epoll_wait epoll_pwait eventfd2 pipe2",
    "threads and scheduling": "futex futex_waitv set_robust_list get_robust_list rseq "
    "set_tid_address arch_prctl prctl sched_yield sched_getaffinity sched_setaffinity "
    "sched_getparam sched_getscheduler sched_get_priority_min sched_get_priority_max getcpu "
    "getpriority",
    "time, identity, randomness": "clock_gettime clock_getres clock_nanosleep nanosleep "
    "gettimeofday time times getrandom getpid gettid getppid getuid geteuid getgid getegid "
    "getgroups getresuid getresgid getrusage getrlimit sysinfo uname",
    "signals and leaving": "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending "
    "rt_sigtimedwait sigaltstack tgkill tkill restart_syscall exit exit_group",
}
ALLOWED = tuple(name for group in _GROUPS.values() for name in group.split())


def install() -> None:
    """Load the filter into this process and every thread it starts from now on.

    Raises ``OSError`` or ``RuntimeError`` (libseccomp missing) when it cannot.
    """
    import pyseccomp as sc  # imported here: the parent never needs it

    denied = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(denied)
    for name in ALLOWED:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) != -1:  # -1: unknown to libseccomp
            rules.add_rule(sc.ALLOW, name)
    rules.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0))  # its own limits only
    rules.load()
