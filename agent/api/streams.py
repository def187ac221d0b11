"""Moving container output to API clients: attach relays and `docker logs`.

Without a terminal, output is multiplexed: each chunk gets Docker's 8-byte header
(stream type, three zero bytes, big-endian length). With a terminal the bytes go as they are.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.api.response import HijackedConnection, ResponseStream
from agent.runtime import attach as shim_attach
from agent.runtime.logfile import Entry, files_oldest_first, parse_line

FOLLOW_POLL = 0.1


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def relay_attach(raw: HijackedConnection, shim: socket.socket, tty: bool, stdin: bool) -> None:
    """Copy the shim's output to the client and the client's input to the shim, until the
    container's output ends; then close the client's connection, as dockerd does."""
    if stdin:
        threading.Thread(target=_pump_input, args=(raw, shim), daemon=True).start()
    try:
        for stream, payload in shim_attach.frames(shim):
            raw.sendall(payload if tty else frame(stream, payload))
    except OSError:
        pass  # the client went away
    finally:
        with contextlib.suppress(OSError):
            shim.close()


def _pump_input(raw: HijackedConnection, shim: socket.socket) -> None:
    try:
        while True:
            data = raw.recv(65536)
            if not data:
                break
            shim.sendall(data)
    except OSError:
        return
    with contextlib.suppress(OSError):
        shim.shutdown(socket.SHUT_WR)  # the client's stdin ended: so does the container's


def _select(
    entries: list[Entry], want_out: bool, want_err: bool, since: int, until: int
) -> list[Entry]:
    chosen = []
    for entry in entries:
        if entry.stream == "stdout" and not want_out:
            continue
        if entry.stream == "stderr" and not want_err:
            continue
        if since and entry.time_ns < since:
            continue
        if until and entry.time_ns > until:
            continue
        chosen.append(entry)
    return chosen


def _encode(entry: Entry, tty: bool, stamps: bool) -> bytes:
    data = (entry.time.encode() + b" " + entry.data) if stamps else entry.data
    return data if tty else frame(2 if entry.stream == "stderr" else 1, data)


def send_logs(
    stream: ResponseStream,
    container: Any,
    manager: Any,
    want_out: bool,
    want_err: bool,
    tty: bool,
    since: int,
    until: int,
    tail: str,
    stamps: bool,
    follow: bool,
    peer_closed: Callable[[], bool],
) -> None:
    path = container.log_file
    entries, position, inode = _read_existing(path)
    chosen = _select(entries, want_out, want_err, since, until)
    if tail != "all":
        try:
            count = int(tail)
        except ValueError:
            count = -1
        if count >= 0:
            chosen = chosen[len(chosen) - count :] if count else []
    for entry in chosen:
        stream.write(_encode(entry, tty, stamps))
    stream.flush()
    if not follow or (until and until < time.time_ns()):
        return
    pending = b""
    while True:
        running = container.state.status in ("running", "paused", "restarting")
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return  # removed
        if info.st_ino != inode or info.st_size < position:
            inode, position, pending = info.st_ino, 0, b""  # rotated
        if info.st_size > position:
            with open(path, "rb") as handle:
                handle.seek(position)
                data = handle.read()
            position += len(data)
            pending += data
            lines = pending.split(b"\n")
            pending = lines.pop()
            new = [e for e in (parse_line(line) for line in lines) if e is not None]
            for entry in _select(new, want_out, want_err, since, until):
                stream.write(_encode(entry, tty, stamps))
            stream.flush()
            continue
        if not running or peer_closed():
            return
        if until and time.time_ns() > until:
            return
        time.sleep(FOLLOW_POLL)


def _read_existing(path: str) -> tuple[list[Entry], int, int]:
    """Every entry on disk, and where the live file ended (to follow from there)."""
    entries: list[Entry] = []
    position, inode = 0, 0
    for name in files_oldest_first(path):
        try:
            with open(name, "rb") as handle:
                data = handle.read()
                info = os.fstat(handle.fileno())
        except FileNotFoundError:
            continue
        complete = data[: data.rfind(b"\n") + 1]
        entries.extend(e for e in (parse_line(line) for line in complete.splitlines()) if e)
        if name == path:
            position, inode = len(complete), info.st_ino
    return entries, position, inode
