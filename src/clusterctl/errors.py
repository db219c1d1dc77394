"""Expected errors: each is one clear message, never a traceback (unless -v).

Exit codes (documented in README):
  0 success, 1 one or more hosts failed, 2 bad input, 3 changes pending under --check.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CHANGES_PENDING = 3


class ClusterctlError(Exception):
    """Base of every expected error. `str(err)` is the whole user-facing message."""

    exit_code = EXIT_HOST_FAILED


class InputError(ClusterctlError):
    """Bad input: inventory, playbook, role, option. Message names file:line:col and key."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, key: str | None = None):
        self.file, self.line, self.column, self.key = file, line, column, key
        where = ""
        if file:
            where = str(file)
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        super().__init__(f"{where}{message}")


class HostError(ClusterctlError):
    """Something failed on (or on the way to) one host."""

    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"{host}: {message}")


class UnreachableError(HostError):
    pass


class HostKeyError(HostError):
    """Unknown or changed SSH host key. A changed key is always fatal."""


class CommandFailed(HostError):
    """A remote command exited non-zero. Carries command, exit code and stderr tail."""

    def __init__(self, host: str, command: str, exit_code: int, stderr: str = "",
                 stdout: str = "", tail_lines: int = 15):
        self.command, self.exit_status = command, exit_code
        self.stderr, self.stdout = stderr, stdout
        lines = (stderr or stdout).rstrip().splitlines()[-tail_lines:]
        tail = "\n".join("    " + ln for ln in lines)
        msg = f"command failed (exit {exit_code}): {command}"
        if tail:
            msg += "\n" + tail
        super().__init__(host, msg)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stops where it is. A KeyboardInterrupt, so every
    clean-up path for Ctrl-C (stop remote helpers, keep partial files for a resume)
    runs for SIGTERM (what systemd, CI and `timeout` send) too."""

    def __init__(self, signum: int = 2):
        import signal
        self.signum = signum
        self.exit_code = 128 + signum
        try:
            self.signame = signal.Signals(signum).name
        except ValueError:
            self.signame = f"signal {signum}"
        super().__init__(self.signame)


def interrupted_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 128+N for signal N."""
    return getattr(exc, "exit_code", 130)


def interrupted_message(exc: BaseException, detail: str = "") -> str:
    name = getattr(exc, "signame", "SIGINT")
    return f"interrupted ({name})" + (f": {detail}" if detail else "")


def raise_on_terminate() -> None:
    """Turn SIGTERM (and SIGHUP) into Interrupted in the main thread."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        raise Interrupted(signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass

