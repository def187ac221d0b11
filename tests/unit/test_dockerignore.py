"""Context patterns: .dockerignore matching, Go globs, the context tar vmctl build sends,
and the engine's side of it (unpacking, sources, content hashes, destinations)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.build.context import clean_source, content_hash, extract, resolve_sources
from agent.build.copying import destination
from agent.build.errors import BuildError
from agent.build.patterns import IgnoreMatcher, glob_match, read_dockerignore
from vmctl.build_cli import context_paths, ignore_matcher, pack_context


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.log"], "a.log", True),
        (["*.log"], "dir/a.log", False),  # * never crosses a /
        (["**/*.log"], "dir/sub/a.log", True),
        (["**/*.log"], "a.log", True),  # **/ spans zero directories too
        (["docs"], "docs/x/y.md", True),  # a match excludes what is under it
        (["docs", "!docs/keep.md"], "docs/keep.md", False),
        (["docs", "!docs/keep.md"], "docs/other.md", True),
        (["!a.txt", "*.txt"], "a.txt", True),  # the last matching line wins
        (["./build//"], "build/out", True),  # cleaned like a path
        (["/abs"], "abs", True),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
        (["[a-c]x"], "bx", True),
        (["[^a-c]x"], "bx", False),
        (["foo/**/bar"], "foo/bar", True),
        (["foo/**/bar"], "foo/a/b/bar", True),
        (["foo/**"], "foo/a", True),
        (["foo/**"], "foox", False),
    ],
)
def test_dockerignore_matching(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher(patterns).excluded(path) is excluded


def test_read_dockerignore_drops_comments_and_blanks() -> None:
    text = "# comment\n\n  *.tmp  \n!keep.tmp\n"
    assert read_dockerignore(text) == ["*.tmp", "!keep.tmp"]


def test_go_glob() -> None:
    assert glob_match("src/*.py", "src/a.py")
    assert not glob_match("src/*.py", "src/sub/a.py")
    assert glob_match("file\\*", "file*")
    assert not glob_match("file\\*", "filex")


def _tree(root: Path) -> None:
    for path, text in {
        "Dockerfile": "FROM busybox\n",
        "app/main.py": "print(1)\n",
        "app/cache/x.pyc": "junk",
        "app/cache/keep.pyc": "kept",
        "notes.log": "log",
        "deep/a/b/c.log": "log",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_context_paths_and_pack_honour_dockerignore(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / ".dockerignore").write_text(
        "app/cache\n!app/cache/keep.pyc\n**/*.log\nDockerfile\n.dockerignore\n"
    )
    paths = list(context_paths(tmp_path, ignore_matcher(tmp_path, ["Dockerfile"])))
    assert "app/cache/x.pyc" not in paths and "app/cache/keep.pyc" in paths
    assert "notes.log" not in paths and "deep/a/b/c.log" not in paths
    assert "Dockerfile" in paths  # always sent, though .dockerignore names it
    out = io.BytesIO()
    pack_context(tmp_path, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert {"Dockerfile", ".dockerignore", "app/main.py", "app/cache/keep.pyc"} <= set(members)
    assert not {"notes.log", "app/cache/x.pyc", "deep/a/b/c.log"} & set(members)
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


def test_pack_context_with_a_dockerfile_outside(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "f").write_text("f")
    outside = tmp_path / "Other.dockerfile"
    outside.write_text("FROM scratch\n")
    out = io.BytesIO()
    pack_context(context, out, outside, ".dockerfile.abc")
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        assert sorted(archive.getnames()) == [".dockerfile.abc", "f"]


def _context_tar(files: dict[str, str], links: dict[str, str] | None = None) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            info.mode = 0o754
            archive.addfile(info, io.BytesIO(text.encode()))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    out.seek(0)
    return out


def test_extract_and_resolve_sources(tmp_path: Path) -> None:
    files = {"Dockerfile": "FROM x", "src/a.py": "a", "src/b.py": "b", "etc/f": "in context"}
    extract(_context_tar(files, {"link": "/etc"}), tmp_path)
    assert (tmp_path / "src/a.py").stat().st_mode & 0o777 == 0o754  # modes kept
    found = resolve_sources(str(tmp_path), ["src/*.py"], "COPY")
    assert [s.name for s in found] == ["a.py", "b.py"]
    (whole,) = resolve_sources(str(tmp_path), ["/src"], "COPY")
    assert whole.is_dir and whole.path == str(tmp_path / "src")
    # a symlink resolves inside the context, never to the host's /etc
    (linked,) = resolve_sources(str(tmp_path), ["link/"], "COPY")
    assert linked.path == str(tmp_path / "etc") and linked.is_dir
    assert (tmp_path / "link").is_symlink()
    with pytest.raises(BuildError, match="file not found in build context"):
        resolve_sources(str(tmp_path), ["nope"], "COPY")
    with pytest.raises(BuildError, match="no source files were specified"):
        resolve_sources(str(tmp_path), ["*.none"], "COPY")


def test_sources_outside_the_context_are_refused() -> None:
    with pytest.raises(BuildError, match="forbidden path outside the build context: ../x"):
        clean_source("../x", "COPY")
    with pytest.raises(BuildError, match="outside the build context"):
        clean_source("a/../../x", "ADD")
    assert clean_source("/a/./b/", "COPY") == "a/b"


def test_extract_refuses_paths_leaving_the_context(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="invalid build context"):
        extract(_context_tar({"../escape": "x"}), tmp_path / "ctx")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(BuildError, match="not a valid tar"):
        extract(io.BytesIO(b"this is not a tar archive at all" * 40), tmp_path)


def test_content_hash_follows_content_and_mode_not_mtime(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("one")
    sources = resolve_sources(str(tmp_path), ["d"], "COPY")
    first = content_hash(sources)
    os.utime(tmp_path / "d/f", (1, 1))
    assert content_hash(sources) == first
    (tmp_path / "d/f").write_text("two")
    assert content_hash(sources) != first
    (tmp_path / "d/f").write_text("one")
    os.chmod(tmp_path / "d/f", 0o600)
    assert content_hash(sources) != first


def test_destination() -> None:
    assert destination("app/", "/srv") == "/srv/app/"
    assert destination("x", "/srv") == "/srv/x"
    assert destination(".", "/srv") == "/srv/"
    assert destination("/abs/../y", "/srv") == "/y"
