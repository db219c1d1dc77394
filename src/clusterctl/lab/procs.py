"""Processes the lab starts, and how it makes sure a PID is still one of them.

A PID alone can be reused after its process exits, so every process the lab records is
recorded with its start time (field 22 of /proc/PID/stat); before a signal is sent, the
start time and the command line are checked again.

A process that has just been started reads an empty /proc/PID/cmdline for a moment: the
kernel closes the close-on-exec descriptors (which is when `subprocess.Popen` returns)
before it has placed the new program's arguments. The start time is already final then
(it is set at fork), so `is_ours` waits briefly for the command line to appear.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])          # field 22 overall; fields[0] is field 3


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


CMDLINE_SETTLE = 1.0       # seconds to wait for the command line of a process in exec


def is_ours(pid: int | None, started: int | None, *markers: str,
            settle: float = CMDLINE_SETTLE) -> bool:
    """True when PID is alive, started when we recorded, and its command line contains
    every marker (a marker matches a whole argument or a part of one).

    An empty command line of a live process with the recorded start time is a process in
    the middle of exec (or a kernel thread, which is never one we recorded): it is read
    again for up to `settle` seconds before the answer is no."""
    if not pid or started is None:
        return False
    if start_time(pid) != started or not alive(pid):     # a zombie is not running
        return False
    if not markers:
        return True
    deadline = time.monotonic() + settle
    delay = 0.001
    while True:
        args = cmdline(pid)
        if args:
            return all(any(m in a for a in args) for m in markers)
        if time.monotonic() >= deadline or start_time(pid) != started or not alive(pid):
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def ns_pid(pid: int) -> list[int]:
    """PIDs of a process in each nested PID namespace (NSpid line), outermost first."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return []


def container_init(nspawn_pid: int) -> int | None:
    """The child of a systemd-nspawn process that is PID 1 of the container."""
    for child in children(nspawn_pid):
        nspid = ns_pid(child)
        if len(nspid) >= 2 and nspid[-1] == 1:
            return child
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def signal_if_ours(pid: int | None, started: int | None, sig: int, *markers: str) -> bool:
    if not is_ours(pid, started, *markers):
        return False
    try:
        os.kill(pid, sig)       # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive (reaping our own children); the survivors."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left:
        for pid in list(left):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not alive(pid):
                left.remove(pid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return left


def stop(pid: int | None, started: int | None, *markers: str, timeout: float = 5.0,
         sig: int = signal.SIGTERM) -> bool:
    """Signal a process we recorded (only if it is still ours), escalate to SIGKILL after
    `timeout`. True when it is gone."""
    if not signal_if_ours(pid, started, sig, *markers):
        return not (pid and alive(pid) and start_time(pid) == started)
    if wait_gone([pid], timeout):            # type: ignore[list-item]
        signal_if_ours(pid, started, signal.SIGKILL, *markers)
        return not wait_gone([pid], 5.0)     # type: ignore[list-item]
    return True
