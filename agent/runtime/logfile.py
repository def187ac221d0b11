"""Docker's json-file log driver: one JSON object per line, rotated by size.

Each line is ``{"log": "...\\n", "stream": "stdout", "time": "<RFC 3339 nanoseconds>"}``,
the format `docker logs` and tools that read /var/lib/docker/containers/*/-json.log expect.
Output is cut into lines at "\\n"; a line longer than 16 KiB is written in pieces without
the newline, as Docker does. With max-size set, the file is rotated to ``.1`` … ``.N-1``
(max-file counts the live file).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

MAX_LINE = 16 * 1024


def timestamp(ns: int | None = None) -> str:
    """RFC 3339 with nanoseconds in UTC, as Go's time.RFC3339Nano prints (no trailing zeros
    are trimmed: docker's own logs keep 9 digits)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch from :func:`timestamp`'s format."""
    import calendar

    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def parse_size(text: str) -> int:
    """Docker's --log-opt max-size: "10m", "100k", "1g", plain bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().removesuffix("b")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


@dataclass
class LogOptions:
    max_size: int = 0  # bytes; 0: never rotate
    max_file: int = 1

    @classmethod
    def from_config(cls, config: dict[str, str] | None) -> LogOptions:
        config = config or {}
        unknown = set(config) - {"max-size", "max-file", "compress", "labels", "env", "tag"}
        if unknown:
            raise ValueError(f"unknown log opt '{sorted(unknown)[0]}' for json-file log driver")
        try:
            size = parse_size(config["max-size"]) if "max-size" in config else 0
            files = int(config.get("max-file", "1"))
        except ValueError:
            raise ValueError("invalid value for log opt max-size or max-file") from None
        if files < 1:
            raise ValueError("max-file cannot be less than 1")
        if files > 1 and not size:
            raise ValueError("max-file can only be used together with max-size")
        return cls(size, files)


class JsonLogWriter:
    """Appends lines for one container; used by the shim, which is the only writer."""

    def __init__(self, path: str, options: LogOptions) -> None:
        self.path = path
        self.options = options
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        buffered = self._partial.get(stream, b"") + data
        lines = buffered.split(b"\n")
        rest = lines.pop()
        out = [line + b"\n" for line in lines]
        while len(rest) >= MAX_LINE:
            out.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[stream] = rest
        if out:
            self._emit(stream, out)

    def flush(self) -> None:
        """At exit: whatever is left without a newline becomes its own entry."""
        for stream, rest in list(self._partial.items()):
            if rest:
                self._emit(stream, [rest])
        self._partial.clear()

    def _emit(self, stream: str, pieces: list[bytes]) -> None:
        now = timestamp()
        lines = [
            json.dumps(
                {"log": piece.decode("utf-8", "replace"), "stream": stream, "time": now}
            ).encode()
            + b"\n"
            for piece in pieces
        ]
        limit = self.options.max_size
        batch = b""
        for line in lines:
            if limit and self._size + len(batch) + len(line) > limit:
                if batch:
                    os.write(self._fd, batch)
                    self._size += len(batch)
                    batch = b""
                if self._size:
                    self._rotate()
            batch += line
        if batch:
            os.write(self._fd, batch)
            self._size += len(batch)

    def _rotate(self) -> None:
        os.close(self._fd)
        keep = self.options.max_file
        if keep <= 1:
            os.truncate(self.path, 0)
        else:
            for index in range(keep - 1, 0, -1):
                older = f"{self.path}.{index}"
                newer = self.path if index == 1 else f"{self.path}.{index - 1}"
                if os.path.exists(newer):
                    os.replace(newer, older)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


@dataclass(frozen=True)
class Entry:
    stream: str
    data: bytes
    time_ns: int
    time: str


def parse_line(line: bytes) -> Entry | None:
    try:
        record = json.loads(line)
        return Entry(
            record["stream"],
            record["log"].encode(),
            parse_timestamp(record["time"]),
            record["time"],
        )
    except (ValueError, KeyError, TypeError):
        return None  # a line cut by a crash mid-write


def files_oldest_first(path: str) -> list[str]:
    rotated = []
    index = 1
    while os.path.exists(f"{path}.{index}"):
        rotated.append(f"{path}.{index}")
        index += 1
    return [*reversed(rotated), path]


def read_entries(path: str) -> Iterator[Entry]:
    """Every entry currently on disk, oldest first (rotated files, then the live one)."""
    for name in files_oldest_first(path):
        try:
            with open(name, "rb") as handle:
                for line in handle:
                    entry = parse_line(line)
                    if entry is not None:
                        yield entry
        except FileNotFoundError:
            continue
