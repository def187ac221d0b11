"""The in-memory tree: merged /usr, symlink resolution, hard links and pruning."""

from __future__ import annotations

import pytest

from images.errors import ImageBuildError
from images.prune import PruneRules, prune_tree
from images.tree import Dir, File, HardLink, Symlink, Tree, normalize


def test_normalize() -> None:
    assert normalize("./usr//bin/x") == "usr/bin/x"
    assert normalize("/") == ""
    with pytest.raises(ImageBuildError):
        normalize("./usr/../../etc/passwd")


def test_merged_usr_has_top_level_symlinks() -> None:
    tree = Tree.merged_usr()
    for name in ("bin", "sbin", "lib", "lib64"):
        assert tree.get(name) == Symlink(f"usr/{name}")
        assert isinstance(tree.get(f"usr/{name}"), Dir)


def test_package_paths_are_folded_into_usr() -> None:
    tree = Tree.merged_usr()
    assert tree.add("./bin/", Dir(0o755), "pkg") == "bin"  # a dir over a dir symlink: kept
    assert tree.get("bin") == Symlink("usr/bin")
    assert tree.add("./bin/ls", File(b"ls", 0o755), "pkg") == "usr/bin/ls"
    assert tree.add("./lib/x86_64-linux-gnu/libc.so.6", File(b"c"), "pkg") == (
        "usr/lib/x86_64-linux-gnu/libc.so.6"
    )
    assert "bin/ls" not in tree
    assert tree.resolve("bin/ls") == "usr/bin/ls"


def test_relative_symlink_moved_by_usr_merge_is_rewritten() -> None:
    tree = Tree.merged_usr()
    tree.add("usr/sbin/real", File(b"x", 0o755), "pkg")
    landed = tree.add("sbin/alias", Symlink("../usr/sbin/real"), "pkg")
    assert landed == "usr/sbin/alias"
    assert tree.get(landed) == Symlink("real")
    assert tree.resolve(landed) == "usr/sbin/real"


def test_absolute_symlinks_resolve_inside_the_tree() -> None:
    tree = Tree.merged_usr()
    tree.add("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", File(b"ld", 0o755))
    tree.add("lib64/ld-linux-x86-64.so.2", Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
    assert tree.resolve("lib64/ld-linux-x86-64.so.2") == (
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    file = tree.real_file("/lib64/ld-linux-x86-64.so.2")
    assert file is not None and file.data == b"ld"


def test_resolve_gives_none_for_dangling_and_looping_links() -> None:
    tree = Tree()
    tree.add("a", Symlink("b"))
    tree.add("b", Symlink("a"))
    tree.add("c", Symlink("/nowhere"))
    assert tree.resolve("a") is None
    assert tree.resolve("c") is None
    assert tree.resolve("c", follow_last=False) == "c"


def test_hard_links_fold_and_chain_to_the_file() -> None:
    tree = Tree.merged_usr()
    tree.add("sbin/mke2fs", File(b"mke2fs", 0o755))
    tree.add("sbin/mkfs.ext4", HardLink("./sbin/mke2fs"))
    tree.add("sbin/mkfs.ext3", HardLink("sbin/mkfs.ext4"))
    assert tree.get("usr/sbin/mkfs.ext4") == HardLink("usr/sbin/mke2fs")
    assert tree.get("usr/sbin/mkfs.ext3") == HardLink("usr/sbin/mke2fs")


def test_hard_link_to_missing_file_is_an_error() -> None:
    with pytest.raises(ImageBuildError, match="hard link"):
        Tree().add("x", HardLink("missing"))


def test_removing_a_linked_file_promotes_a_link() -> None:
    tree = Tree()
    tree.add("a", File(b"data", 0o755))
    tree.add("b", HardLink("a"))
    tree.add("c", HardLink("a"))
    tree.remove("a")
    assert tree.get("b") == File(b"data", 0o755)
    assert tree.get("c") == HardLink("b")


def test_later_file_replaces_earlier_and_is_recorded() -> None:
    tree = Tree()
    tree.add("etc/x", File(b"one"), "first")
    tree.add("etc/x", File(b"two"), "second")
    assert tree.get("etc/x") == File(b"two")
    assert tree.conflicts == ["etc/x: first replaced by second"]


def test_parents_are_created_and_sorted_before_children() -> None:
    tree = Tree()
    tree.add("a/b/c", File(b""))
    tree.add("a-b", File(b""))
    assert tree.sorted_paths() == ["a", "a/b", "a/b/c", "a-b"]


def test_prune_rules() -> None:
    rules = PruneRules(["usr/share/doc", "**/__pycache__", "usr/lib/python3.*/test", "etc/rc?.d"])
    assert rules.matches("usr/share/doc")
    assert rules.matches("usr/share/doc/pkg/copyright")
    assert not rules.matches("usr/share/docs")
    assert rules.matches("usr/lib/python3.11/__pycache__/x.pyc")
    assert rules.matches("usr/lib/python3.11/test/test_x.py")
    assert not rules.matches("usr/lib/python3.11/tests.py")
    assert rules.matches("etc/rc2.d/S01x")
    assert not rules.matches("etc/rc.local")


def test_prune_tree_removes_matches_and_keeps_usr_dirs() -> None:
    tree = Tree.merged_usr()
    tree.add("usr/share/doc/pkg/copyright", File(b"c"))
    tree.add("usr/share/man/man1/x.1.gz", File(b"m"))
    tree.add("usr/bin/tool", File(b"t", 0o755))
    removed = prune_tree(tree, ["usr/share/doc", "usr/share/man", "usr/bin"])
    assert removed == ["usr/bin/tool", "usr/share/doc", "usr/share/man"]
    assert "usr/bin/tool" not in tree  # files under a protected dir still go
    assert isinstance(tree.get("usr/bin"), Dir)
    assert not [p for p in tree if p.startswith("usr/share/doc")]
