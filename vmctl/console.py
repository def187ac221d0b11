"""Reading the guest's serial console log (serial.log) as QEMU writes it."""

from __future__ import annotations

from pathlib import Path

TAIL_LINES = 25


class ConsoleLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        """Complete lines written since the last call (none if the file is not there yet)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [clean(line) for line in lines]

    def tail(self, lines: int = TAIL_LINES) -> str:
        return tail_lines(self.path, lines)


def tail_lines(path: Path, lines: int = TAIL_LINES, missing: str = "(no console output)") -> str:
    """The last `lines` lines of a log (all of it with 0) as printable text, or `missing`."""
    try:
        data = path.read_bytes()
    except OSError:
        return missing
    text = [clean(line) for line in data.split(b"\n")]
    while text and not text[-1]:
        text.pop()
    if lines > 0:
        text = text[-lines:]
    return "\n".join(text) if text else missing


def clean(line: bytes) -> str:
    """Console bytes to printable text: drop carriage returns and terminal escapes."""
    text = line.decode("utf-8", errors="replace").replace("\r", "")
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            # skip an escape sequence: ESC [ params letter, or ESC + one char
            i += 1
            if i < len(text) and text[i] == "[":
                i += 1
                while i < len(text) and not text[i].isalpha():
                    i += 1
            i += 1
            continue
        if ch == "\t" or ch >= " ":
            out.append(ch)
        i += 1
    return "".join(out)
