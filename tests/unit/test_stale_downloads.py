"""A failed pull's partial layers are kept for a resume, and pruned at engine open once stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.engine import STALE_DOWNLOAD_SECONDS, prune_stale_downloads


def test_only_stale_files_go(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fresh = downloads / "aaaa.partial"
    stale = downloads / "bbbb.partial"
    fresh.write_bytes(b"resume me")
    stale.write_bytes(b"forgotten")
    old = time.time() - STALE_DOWNLOAD_SECONDS - 60
    os.utime(stale, (old, old))
    (downloads / "subdir").mkdir()  # not ours to remove
    assert prune_stale_downloads(downloads) == 1
    assert sorted(p.name for p in downloads.iterdir()) == ["aaaa.partial", "subdir"]


def test_no_downloads_directory_yet(tmp_path: Path) -> None:
    assert prune_stale_downloads(tmp_path / "downloads") == 0
