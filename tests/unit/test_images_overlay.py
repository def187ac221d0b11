"""The overlay layer and the build outputs' bookkeeping (no network, no apt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from images.builder import _merged_files
from images.built import current_image
from images.listing import describe
from images.overlay import build_overlay, collect_sources, sources_digest
from images.pycompile import Interpreter, cache_tag
from images.tree import Dir, File, Symlink, Tree


def base_listing() -> list[dict[str, object]]:
    tree = Tree.merged_usr()
    tree.add("root", Dir(0o700))
    tree.add("etc/ssh", Dir(0o755))
    tree.add("etc/passwd", File(b"base"))
    return describe(tree, "base")


def project(tmp_path: Path) -> tuple[Path, Path]:
    rootfs = tmp_path / "guest" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "root" / ".ssh").mkdir(parents=True)
    (rootfs / "init").write_text("#!/bin/sh\n")
    (rootfs / "init").chmod(0o775)
    (rootfs / "bin" / "helper").write_text("#!/bin/sh\n")
    (rootfs / "bin" / "helper").chmod(0o700)
    (rootfs / "root" / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA\n")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (rootfs / "etc" / "motd").symlink_to("passwd")
    agent = tmp_path / "src" / "agent"
    (agent / "api" / "__pycache__").mkdir(parents=True)
    (agent / "__init__.py").write_text("VERSION = 1\n")
    (agent / "api" / "__init__.py").write_text("")
    (agent / "api" / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"old")
    (agent / "data.json").write_text("{}")
    return rootfs, agent


def test_collect_sources_maps_rootfs_and_agent(tmp_path: Path) -> None:
    rootfs, agent = project(tmp_path)
    sources = {s.guest_path: s for s in collect_sources(rootfs, agent, "usr/lib/vmctl/python")}
    assert set(sources) == {
        "init",
        "bin/helper",
        "root/.ssh/authorized_keys",
        "etc/passwd",
        "etc/motd",
        "usr/lib/vmctl/python/agent/__init__.py",
        "usr/lib/vmctl/python/agent/api/__init__.py",
    }
    assert sources["init"].mode == 0o755
    assert sources["bin/helper"].mode == 0o755
    assert sources["etc/passwd"].mode == 0o644
    assert sources["etc/motd"].kind == "symlink" and sources["etc/motd"].data == b"passwd"


def test_sources_digest_follows_content_and_mode(tmp_path: Path) -> None:
    rootfs, agent = project(tmp_path)
    before = sources_digest(collect_sources(rootfs, agent, "x"))
    assert before == sources_digest(collect_sources(rootfs, agent, "x"))
    (agent / "__init__.py").write_text("VERSION = 2\n")
    changed = sources_digest(collect_sources(rootfs, agent, "x"))
    assert changed != before
    (rootfs / "etc" / "passwd").chmod(0o755)
    assert sources_digest(collect_sources(rootfs, agent, "x")) != changed


def test_overlay_respects_base_symlinks_and_modes(tmp_path: Path) -> None:
    rootfs, agent = project(tmp_path)
    sources = collect_sources(rootfs, agent, "usr/lib/vmctl/python")
    overlay = build_overlay(sources, base_listing(), "usr/lib/vmctl/python", None, "cpython-311")
    assert "bin" not in overlay  # the base's /bin -> usr/bin symlink must survive
    assert overlay.get("usr/bin/helper") == File(b"#!/bin/sh\n", 0o755)
    assert overlay.get("root") == Dir(0o700)  # not re-chmodded to 0755 by the overlay
    assert overlay.get("root/.ssh") == Dir(0o755)
    assert overlay.get("etc/motd") == Symlink("passwd")
    assert overlay.get("usr/lib/vmctl/python/agent/__init__.py") == File(b"VERSION = 1\n", 0o644)
    assert not [p for p in overlay if "__pycache__" in p]


def test_overlay_compiles_agent_bytecode(tmp_path: Path) -> None:
    rootfs, agent = project(tmp_path)
    sources = collect_sources(rootfs, agent, "usr/lib/vmctl/python")
    python = Interpreter([sys.executable, "-S", "-B"], {"PYTHONHASHSEED": "0"})
    tag = cache_tag(f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}")
    overlay = build_overlay(sources, base_listing(), "usr/lib/vmctl/python", python, tag)
    pyc = overlay.get(f"usr/lib/vmctl/python/agent/__pycache__/__init__.{tag}.pyc")
    assert isinstance(pyc, File)
    flags = int.from_bytes(pyc.data[4:8], "little")
    assert flags == 0b01  # hash-based, not checked against the source: reproducible
    assert b"/usr/lib/vmctl/python/agent/__init__.py" in pyc.data  # guest path in tracebacks
    assert str(tmp_path).encode() not in pyc.data


def test_merged_files_prefers_overlay_but_keeps_base_dirs() -> None:
    base = [
        {"path": "/etc", "type": "dir", "mode": "0755", "layer": "base"},
        {"path": "/etc/passwd", "type": "file", "layer": "base"},
    ]
    overlay = [
        {"path": "/etc", "type": "dir", "mode": "0755", "layer": "overlay"},
        {"path": "/etc/passwd", "type": "file", "layer": "overlay"},
        {"path": "/init", "type": "file", "layer": "overlay"},
    ]
    merged = _merged_files(base, overlay)
    assert [(e["path"], e["layer"]) for e in merged] == [
        ("/etc", "base"),
        ("/etc/passwd", "overlay"),
        ("/init", "overlay"),
    ]


def test_current_image(tmp_path: Path) -> None:
    assert current_image(tmp_path) is None
    image_dir = tmp_path / "abcdef123456"
    image_dir.mkdir()
    (tmp_path / "current").write_text(
        json.dumps({"image_id": "abcdef123456", "kernel_release": "6.1.0-1-amd64"})
    )
    assert current_image(tmp_path) is None  # files missing
    for name in ("vmlinux", "vmlinuz", "initrd.img", "manifest.json", "busybox.tar"):
        (image_dir / name).write_bytes(b"")
    image = current_image(tmp_path)
    assert image is not None
    assert image.kernel == image_dir / "vmlinux"
    assert image.initrd == image_dir / "initrd.img"
    assert image.kernel_release == "6.1.0-1-amd64"
    (tmp_path / "current").write_text("{not json")
    assert current_image(tmp_path) is None


@pytest.mark.parametrize("stdlib", ["usr/lib/python3.11", "usr/lib/python3.12/"])
def test_cache_tag(stdlib: str) -> None:
    assert cache_tag(stdlib) == "cpython-3" + stdlib.rstrip("/").rsplit(".", 1)[1]
