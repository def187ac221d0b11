"""Drop what a RAM-root guest never reads (docs, man pages, locales, Python tests...)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from images.tree import Dir, Tree


def _compile(pattern: str) -> re.Pattern[str]:
    # "**" spans directories, "*" and "?" stay within one path component.
    parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
    regex = ""
    for part in parts:
        if part in ("**", "**/"):
            regex += "(?:.*/)?" if part == "**/" else ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    return re.compile(regex + r"\Z")


class PruneRules:
    """Patterns matched against a path and each of its parent directories."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [_compile(p) for p in patterns]

    def matches(self, path: str) -> bool:
        parts = path.split("/")
        for end in range(1, len(parts) + 1):
            prefix = "/".join(parts[:end])
            if any(p.match(prefix) for p in self.patterns):
                return True
        return False


def prune_tree(tree: Tree, patterns: Iterable[str]) -> list[str]:
    """Remove matching paths (and what is below them); return the removed top paths."""
    rules = PruneRules(patterns)
    removed: list[str] = []
    protected = _protected(tree)
    for path in tree.sorted_paths():
        if path in tree and path not in protected and rules.matches(path):
            tree.remove(path)
            removed.append(path)
    return removed


def _protected(tree: Tree) -> set[str]:
    # The merged-usr directories themselves are never pruned, whatever a pattern says.
    return {
        p
        for p in ("usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64")
        if isinstance(tree.get(p), Dir)
    }
