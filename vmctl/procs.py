"""Pid files and process checks. A pid is only trusted when the process behind it is
still ours: pids are reused, so every check also matches the command line against the
machine directory, which both QEMU's and the host agent's argv name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vmctl.atomic import write_atomic


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    write_atomic(path, f"{pid}\n")


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    return True


def command_line(pid: int) -> str:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.exists():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    if sys.platform == "win32":
        return ""
    try:
        return subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def names_directory(cmdline: str, directory: Path) -> bool:
    """Whether a command line names `directory` itself or a file in it.

    Matching a bare substring would take /machines/a for /machines/ab; a path must be
    followed by "/" (a file in it, as in QEMU's -pidfile) or end an argument (--dir).
    """
    text = f" {cmdline.strip()} "
    return f"{directory}/" in text or f" {directory} " in text


def live_pid(path: Path, directory: Path) -> int | None:
    """The pid in `path` if that process is alive and its command line names `directory`."""
    pid = read_pid(path)
    if pid is None or not alive(pid):
        return None
    if sys.platform != "win32" and not names_directory(command_line(pid), directory):
        return None
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def terminate(pid: int, timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL. True if the process is gone afterwards."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, wait):
            return True
    return False


def spawn_daemon(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start a background process in its own session, detached from the terminal."""
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return proc.pid
