"""Layers with whiteouts (root: they become overlay markers) are saved back byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agent.images.save import SavePlan, select
from agent.images.store import ImageStore

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("whiteouts become device nodes: needs root", allow_module_level=True)


def entry(
    name: str, data: bytes | None = None, directory: bool = False
) -> tuple[tarfile.TarInfo, bytes | None]:
    member = tarfile.TarInfo(name)
    member.mtime, member.mode = 1_700_000_000, 0o755 if directory else 0o644
    if directory:
        member.type = tarfile.DIRTYPE
    else:
        member.size = len(data or b"")
    return member, data


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in entries:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_whiteouts_and_opaque_directories_round_trip(tmp_path: Path) -> None:
    base = tar_of(
        [
            entry("etc/", directory=True),
            entry("etc/gone", b"deleted above"),
            entry("cache/", directory=True),
            entry("cache/old", b"hidden by the opaque marker"),
        ]
    )
    top = tar_of(
        [
            entry("etc/.wh.gone", b""),
            entry("cache/", directory=True),
            entry("cache/.wh..wh..opq", b""),
            entry("cache/new", b"fresh"),
            entry("tmp/scratch", b"written, then whited out in the same layer"),
            entry("tmp/.wh.scratch", b""),
        ]
    )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha(base), sha(top)]},
        }
    ).encode()
    store = ImageStore(tmp_path / "store")
    layers = [base, top]
    image = store.load_layers_and_config(config, lambda i: io.BytesIO(layers[i]))
    diff = image.layer_dirs[1]
    assert stat.S_ISCHR((diff / "etc" / "gone").lstat().st_mode)  # an overlay whiteout
    assert os.getxattr(diff / "cache", "trusted.overlay.opaque") == b"y"
    assert stat.S_ISCHR((diff / "tmp" / "scratch").lstat().st_mode)
    out = io.BytesIO()
    SavePlan(store, select(store, [image.id])).write(out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as saved:
        for layer in layers:
            handle = saved.extractfile("blobs/sha256/" + sha(layer)[7:])
            assert handle is not None and handle.read() == layer
