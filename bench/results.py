"""Where the benchmarks' figures go: printed, and with --record appended to RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def report(block: str, record: bool) -> None:
    print(block)
    if record:
        with open(RESULTS, "a") as f:
            f.write("\n" + block)
