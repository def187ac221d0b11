"""An in-memory root filesystem: path -> node, with merged-usr semantics.

Package contents never touch the disk under their own names, so a hostile or broken
package path cannot escape anywhere; the tree is only ever serialised (cpio) or written
below a directory the builder owns, by the builder's own code.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from images.errors import ImageBuildError


@dataclass
class File:
    data: bytes = field(repr=False)
    mode: int = 0o644  # permission bits only (including setuid/sticky)


@dataclass
class Dir:
    mode: int = 0o755


@dataclass
class Symlink:
    target: str  # as stored in the link, absolute or relative


@dataclass
class HardLink:
    target: str  # tree path of the regular file this is another name of


@dataclass
class Device:
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o600


Node = File | Dir | Symlink | HardLink | Device

# Merged /usr (Debian's default since bookworm): the top-level names are symlinks.
USR_MERGED = ("bin", "sbin", "lib", "lib64")
_MAX_HOPS = 40  # symlinks followed before giving up, as the kernel does


def normalize(name: str) -> str:
    """'./usr//bin/x' -> 'usr/bin/x'; '..' is refused outright ('' is the root)."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ImageBuildError(f"refusing path with '..': {name!r}")
        parts.append(part)
    return "/".join(parts)


class Tree:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": Dir(0o755)}
        self.owners: dict[str, str] = {}  # path -> package (or "builder") that made it
        self.conflicts: list[str] = []

    @classmethod
    def merged_usr(cls) -> Tree:
        tree = cls()
        for name in USR_MERGED:
            tree.add(f"usr/{name}", Dir(0o755), "builder")
            tree.add(name, Symlink(f"usr/{name}"), "builder")
        return tree

    # -- lookup ----------------------------------------------------------------------
    def __contains__(self, path: str) -> bool:
        return path in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def resolve(self, path: str, follow_last: bool = True) -> str | None:
        """Follow symlinks inside the tree; None when dangling or looping."""
        todo = normalize(path).split("/") if path.strip("/") else []
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            current = "/".join([*done, part])
            node = self.nodes.get(current)
            if isinstance(node, Symlink) and (todo or follow_last):
                hops += 1
                if hops > _MAX_HOPS:
                    return None
                target = node.target
                base = [] if target.startswith("/") else done
                joined = posixpath.normpath("/" + "/".join([*base, target])).lstrip("/")
                todo = ([p for p in joined.split("/") if p]) + todo
                done = []
                continue
            if node is None:
                return None
            done.append(part)
        return "/".join(done)

    def real_file(self, path: str) -> File | None:
        """The regular file behind `path`, through symlinks and hard links."""
        real = self.resolve(path)
        node = self.nodes.get(real) if real is not None else None
        if isinstance(node, HardLink):
            node = self.nodes.get(node.target)
        return node if isinstance(node, File) else None

    def children(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return sorted(p for p in self.nodes if p.startswith(prefix) and p != path)

    # -- changes ---------------------------------------------------------------------
    def _parent_dir(self, path: str, owner: str) -> str:
        """The real directory a new entry's parent names, creating missing ones.

        Following symlinked parents is what makes merged-usr work: /bin/ls lands in
        usr/bin because bin -> usr/bin.
        """
        parent = posixpath.dirname(path)
        if not parent:
            return ""
        real = self.resolve(parent)
        if real is None:
            self.add(parent, Dir(0o755), owner)
            real = self.resolve(parent)
        if real is None or not isinstance(self.nodes.get(real), Dir):
            raise ImageBuildError(f"{owner}: parent of {path!r} is not a directory")
        return real

    def add(self, name: str, node: Node, owner: str = "builder") -> str:
        """Add `node` at `name` (parents created); return the path it really landed at."""
        path = normalize(name)
        if not path:
            if isinstance(node, Dir):
                return ""
            raise ImageBuildError(f"{owner}: cannot replace the root directory")
        parent = self._parent_dir(path, owner)
        real = (
            posixpath.join(parent, posixpath.basename(path)) if parent else posixpath.basename(path)
        )
        if real != path and isinstance(node, Symlink) and not node.target.startswith("/"):
            # A relative link moved by merged-usr must still point at the same file.
            wanted = posixpath.normpath(posixpath.join(posixpath.dirname(path), node.target))
            wanted = self.resolve(wanted, follow_last=False) or wanted
            node = Symlink(posixpath.relpath(wanted, parent or "."))
        if isinstance(node, HardLink):
            target = self.resolve(normalize(node.target), follow_last=False)
            if target is None or not isinstance(self.nodes.get(target), File | HardLink):
                raise ImageBuildError(f"{owner}: hard link {path!r} -> missing {node.target!r}")
            existing_link = self.nodes[target]
            node = HardLink(existing_link.target if isinstance(existing_link, HardLink) else target)
        existing = self.nodes.get(real)
        if existing is not None:
            if isinstance(node, Dir) and isinstance(existing, Dir):
                return real  # directories are shared between packages
            if (
                isinstance(node, Dir)
                and isinstance(existing, Symlink)
                and isinstance(self.nodes.get(self.resolve(real) or ""), Dir)
            ):
                return real  # a package dir over a symlinked dir (e.g. /lib64)
            if isinstance(existing, Dir) and self.children(real):
                raise ImageBuildError(f"{owner}: {real!r} would replace a non-empty directory")
            self.conflicts.append(f"{real}: {self.owners.get(real, '?')} replaced by {owner}")
            self.remove(real)
        self.nodes[real] = node
        self.owners[real] = owner
        return real

    def remove(self, path: str) -> None:
        """Remove `path` and everything under it, keeping hard links to it valid."""
        doomed = [path, *self.children(path)] if isinstance(self.nodes.get(path), Dir) else [path]
        has_links = any(isinstance(n, HardLink) for n in self.nodes.values())
        for victim in doomed:
            node = self.nodes.pop(victim, None)
            self.owners.pop(victim, None)
            if has_links and isinstance(node, File):
                self._promote_link(victim, node)

    def _promote_link(self, old: str, file: File) -> None:
        links = sorted(
            p for p, n in self.nodes.items() if isinstance(n, HardLink) and n.target == old
        )
        if not links:
            return
        heir = links[0]
        self.nodes[heir] = file
        for other in links[1:]:
            self.nodes[other] = HardLink(heir)

    def sorted_paths(self) -> list[str]:
        """Parents before children, deterministic: sorted by path components."""
        return sorted((p for p in self.nodes if p), key=lambda p: p.split("/"))
