"""Recipe loading, the private apt root's configuration, and stdlib compilation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from images import aptroot
from images.aptroot import AptRoot, require_apt, sha256_file
from images.errors import ImageBuildError
from images.pycompile import Interpreter, compile_stdlib, stage_python
from images.recipe import DEFAULT_RECIPE, load_recipe
from images.records import PackageRecord
from images.tree import File, Symlink, Tree


def test_shipped_recipe_loads() -> None:
    recipe = load_recipe()
    assert recipe.suite == "bookworm" and recipe.arch == "amd64"
    assert "busybox-static" in recipe.install and "dpkg" in recipe.exclude
    assert recipe.kernel_package == "linux-image-amd64"
    assert recipe.strip_module_signatures is True
    sets = dict(recipe.module_sets)
    assert list(sets) == ["boot", "disk", "shares", "later"]
    assert sets["boot"].index("virtio_ring") < sets["boot"].index("virtio_pci")
    assert "ext4" in sets["disk"] and "9p" in sets["shares"] and "overlay" in sets["later"]
    assert recipe.compression == "none"
    assert any(f.path == "etc/passwd" for f in recipe.files)
    assert len(recipe.sha256) == 64


def test_bad_compression_is_rejected(tmp_path: Path) -> None:
    text = DEFAULT_RECIPE.read_text().replace('compression = "none"', 'compression = "lz5"')
    (tmp_path / "recipe.toml").write_text(text)
    with pytest.raises(ImageBuildError, match="lz5"):
        load_recipe(tmp_path / "recipe.toml")


def test_missing_apt_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aptroot.shutil, "which", lambda name: None)
    with pytest.raises(ImageBuildError, match="Debian or Ubuntu host"):
        require_apt()


def test_private_apt_root_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    recipe = dataclasses.replace(load_recipe(), keyring=str(keyring))
    monkeypatch.setattr(aptroot, "require_apt", lambda: "/usr/bin/apt-get")
    apt = AptRoot(tmp_path / "cache", recipe, lambda line: None)
    apt._prepare()
    sources = apt.sources.read_text().splitlines()
    assert sources[0] == (
        f"deb [arch=amd64 signed-by={keyring}] http://deb.debian.org/debian bookworm main"
    )
    assert any("debian-security bookworm-security main" in line for line in sources)
    argv = apt._argv("update")
    assert argv[-1] == "update"
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    assert options["Dir::Etc::SourceList"] == str(apt.sources)
    assert options["Dir::Etc::SourceParts"] == "/dev/null"
    assert options["APT::Architecture"] == "amd64"
    assert options["Dir::State::Lists"].startswith(str(tmp_path))


def test_download_reuses_verified_debs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "tool_1.0_amd64.deb").write_bytes(b"deb bytes")
    record = PackageRecord(
        "tool",
        "1.0",
        filename="pool/main/t/tool/tool_1.0_amd64.deb",
        sha256=sha256_file(debs / "tool_1.0_amd64.deb"),
    )

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("apt-get must not run when every .deb is cached")

    monkeypatch.setattr(aptroot.subprocess, "Popen", no_network)
    apt = AptRoot(tmp_path, load_recipe(), lambda line: None)
    assert apt.download([record], debs) == {"tool": debs / "tool_1.0_amd64.deb"}


def test_stdlib_becomes_sourceless_bytecode(tmp_path: Path) -> None:
    stdlib = f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
    tree = Tree()
    tree.add(f"{stdlib}/json/__init__.py", File(b"import sys\nX = {'a', 'b'}\n"))
    tree.add(f"{stdlib}/broken.py", File(b"def (:\n"))
    tree.add(f"{stdlib}/link.py", Symlink("json/__init__.py"))
    stage = tmp_path / "stage"
    stage_python(tree, stage, "usr/bin/python3", stdlib)
    assert (stage / stdlib / "json/__init__.py").read_bytes().startswith(b"import sys")
    assert not (stage / stdlib / "link.py").is_symlink()  # copies only inside the stage
    python = Interpreter([sys.executable, "-S", "-B"], {"PYTHONHASHSEED": "0"})
    failures = compile_stdlib(tree, python, stage, stdlib, sourceless=True)
    assert [name for name, _ in failures] == [f"/{stdlib}/broken.py"]
    pyc = tree.get(f"{stdlib}/json/__init__.pyc")
    assert isinstance(pyc, File) and int.from_bytes(pyc.data[4:8], "little") == 0b01
    assert f"{stdlib}/json/__init__.py" not in tree
    assert isinstance(tree.get(f"{stdlib}/broken.py"), File)  # kept as source
    # A link to a compiled module now links to its .pyc, under a .pyc name.
    assert tree.get(f"{stdlib}/link.pyc") == Symlink("json/__init__.pyc")
    assert f"{stdlib}/link.py" not in tree
    again = Tree()
    again.add(f"{stdlib}/json/__init__.py", File(b"import sys\nX = {'a', 'b'}\n"))
    compile_stdlib(again, python, stage, stdlib, sourceless=True)
    assert again.get(f"{stdlib}/json/__init__.pyc") == pyc  # reproducible bytes
