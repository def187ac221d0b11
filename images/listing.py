"""Describe a tree's entries for the manifest (and the overlay builder) as plain JSON."""

from __future__ import annotations

import hashlib
from typing import Any

from images.tree import Device, Dir, File, HardLink, Symlink, Tree


def describe(tree: Tree, layer: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in tree.sorted_paths():
        node = tree.get(path)
        entry: dict[str, Any] = {"path": "/" + path, "layer": layer}
        if isinstance(node, Dir):
            entry |= {"type": "dir", "mode": f"{node.mode:04o}"}
        elif isinstance(node, File):
            entry |= {
                "type": "file",
                "mode": f"{node.mode:04o}",
                "size": len(node.data),
                "sha256": hashlib.sha256(node.data).hexdigest(),
            }
        elif isinstance(node, HardLink):
            entry |= {"type": "hardlink", "target": "/" + node.target}
        elif isinstance(node, Symlink):
            entry |= {"type": "symlink", "target": node.target}
        elif isinstance(node, Device):
            entry |= {
                "type": "char" if node.kind == "c" else "block",
                "mode": f"{node.mode:04o}",
                "rdev": [node.major, node.minor],
            }
        entries.append(entry)
    return entries


def skeleton(entries: list[dict[str, Any]]) -> Tree:
    """A tree of only the directories and symlinks of a listing: enough to resolve paths."""
    tree = Tree()
    for entry in entries:
        path = entry["path"].lstrip("/")
        if entry["type"] == "dir":
            tree.nodes[path] = Dir(int(entry["mode"], 8))
        elif entry["type"] == "symlink":
            tree.nodes[path] = Symlink(entry["target"])
    return tree
