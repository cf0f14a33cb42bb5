"""A run's supervisor: the small process that owns a CLI's lifetime, outside the worker's process group.

    python -I -S supervisor.py CONTROL_FD REPORT_FD BUDGET GRACE WRAPPER_DEPTH -- COMMAND...

It starts COMMAND (the sandbox, or the CLI itself when the sandbox is off) in a process group of its own and
kills every process of the run — descendants that detached with setsid() included, since the supervisor is
their child subreaper — when any of these happens:

* the deadline passes: BUDGET seconds from start, moved by each ``extend SECONDS`` line on CONTROL_FD. The
  worker extends it after each lease renewal, so a worker that stops renewing (SIGSTOP, a long pause, a
  blocked database call) has its CLI killed (SIGKILL, no grace) before the lease can expire and the task be
  leased again;
* ``stop GRACE`` arrives on CONTROL_FD (timeout, cancel, lost lease): SIGTERM, then SIGKILL after GRACE;
* CONTROL_FD reaches end of file: the worker died (SIGKILL, OOM, a deploy): SIGKILL at once.

WRAPPER_DEPTH is 2 when COMMAND is bwrap (bwrap, then its init in the new PID namespace, then the CLI): the
wrappers are spared the SIGTERM, which the CLI gets to end gracefully, since killing them tears the namespace
down with SIGKILL at once. When COMMAND exits, whatever it left behind is killed too.

The outcome goes to REPORT_FD as one line: ``exit N``, ``signal N``, ``deadline exit N`` / ``deadline signal N``
(or ``spawn ERRNO``). Stdlib only, few imports: it starts on every run, so its start-up is part of every job's
latency.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
NO_DEADLINE = float("inf")


def _become_subreaper() -> None:
    # Orphans of the run (a double fork, setsid) are re-parented to us rather than to init, so we can find and
    # kill them. Under bwrap the PID namespace does this too; without it this is what catches them.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, depth) of every live process below `root`, from /proc, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[tuple[int, int]] = []
    queue = [(root, 0)]
    while queue:
        parent, depth = queue.pop()
        for pid in children.get(parent, []):
            found.append((pid, depth + 1))
            queue.append((pid, depth + 1))
    return found


def _signal_all(sig: int, *, below_depth: int = 0) -> int:
    """Signal the run's processes deeper than `below_depth`; returns how many the run still has."""
    processes = _descendants(os.getpid())
    for pid, depth in processes:
        if depth > below_depth:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
    return len(processes)


def _reap(child: int, status: list[int]) -> bool:
    """Collect exited children (orphans included); True once the main child has exited."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return bool(status)
        if pid == child:
            status.append(wait_status)


def _terminate(child: int, status: list[int], grace: float, wrapper_depth: int) -> None:
    """SIGTERM every process of the run, SIGKILL what is left after `grace`, reap them all."""
    if grace > 0 and _signal_all(signal.SIGTERM, below_depth=wrapper_depth):
        end = time.monotonic() + grace
        while time.monotonic() < end:
            _reap(child, status)
            if not _descendants(os.getpid()):
                break
            time.sleep(0.02)
    while _signal_all(signal.SIGKILL):
        _reap(child, status)
        time.sleep(0.01)
    _reap(child, status)


def _outcome(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"signal {os.WTERMSIG(wait_status)}"
    return f"exit {os.waitstatus_to_exitcode(wait_status)}"


def main(argv: list[str]) -> int:
    control_fd, report_fd = int(argv[1]), int(argv[2])
    budget, grace, wrapper_depth = float(argv[3]), float(argv[4]), int(argv[5])
    command = argv[argv.index("--") + 1:]
    _become_subreaper()
    deadline = time.monotonic() + budget if budget > 0 else NO_DEADLINE
    try:
        child = os.posix_spawnp(command[0], command, os.environ, setpgroup=0)
    except OSError as exc:
        os.write(report_fd, f"spawn {exc.errno}\n".encode())
        return 0
    pidfd = os.pidfd_open(child)
    status: list[int] = []
    reason = ""
    buffered = b""
    while not reason:
        timeout = max(0.0, deadline - time.monotonic()) if deadline != NO_DEADLINE else None
        ready, _, _ = select.select([control_fd, pidfd], [], [], timeout)
        if pidfd in ready and _reap(child, status):
            break
        if control_fd in ready:
            data = os.read(control_fd, 4096)
            if not data:
                reason, grace = "orphaned", 0.0  # the worker is gone: nobody will record this run
                break
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                verb, _, value = line.decode().partition(" ")
                if verb == "extend":
                    deadline = time.monotonic() + float(value)
                elif verb == "stop":
                    reason, grace = "stopped", float(value)
        if not reason and time.monotonic() >= deadline:
            # No grace: the lease ends soon after this moment, and then the task may run elsewhere.
            reason, grace = "deadline", 0.0
    # Whatever ended the wait, nothing of the run outlives it: the CLI's detached descendants included.
    _terminate(child, status, grace if reason else 0.0, wrapper_depth)
    outcome = _outcome(status[0]) if status else "signal 9"
    prefix = "deadline " if reason == "deadline" else ""
    try:
        os.write(report_fd, f"{prefix}{outcome}\n".encode())
    except BrokenPipeError:
        return 1  # the worker is gone: the outcome has no reader
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
