"""Turn Docker's `User` and `GroupAdd` into numbers, from the image's own passwd and group.

The rules follow what a user of Docker sees: names are looked up in the container's
/etc/passwd and /etc/group; a bare number needs no entry (gid 0 then); `user:group` takes
the group from the right-hand side; the user's supplementary groups come from /etc/group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from agent.runtime.rootpath import secure_join


class UserError(ValueError):
    """A user or group that cannot be found or parsed."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = field(default_factory=tuple)
    home: str = "/"
    name: str = ""


def _entries(root: str, path: str) -> list[list[str]]:
    try:
        with open(secure_join(root, path), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _number(text: str) -> int | None:
    if text.isdigit():
        value = int(text)
        if value > 0xFFFFFFFE:
            raise UserError(f"uid/gid {text} is out of range")
        return value
    return None


def resolve(root: str, user: str, group_add: list[str] | None = None) -> Identity:
    user = user or "root"
    name_part, _, group_part = user.partition(":")
    passwd = [e for e in _entries(root, "/etc/passwd") if len(e) >= 7]
    groups = [e for e in _entries(root, "/etc/group") if len(e) >= 3]

    uid = _number(name_part)
    entry = next(
        (e for e in passwd if (e[0] == name_part if uid is None else e[2] == name_part)), None
    )
    if uid is None:
        if entry is None:
            raise UserError(f"unable to find user {name_part}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None else "/"
    login = entry[0] if entry is not None else ""

    if group_part:
        gid = _group_id(groups, group_part)

    supplementary: list[int] = []
    if login and not group_part:
        supplementary = [int(g[2]) for g in groups if login in g[3].split(",") and g[2].isdigit()]
    for extra in group_add or []:
        supplementary.append(_group_id(groups, extra))
    ordered = tuple(dict.fromkeys([gid, *supplementary]))
    return Identity(uid=uid, gid=gid, groups=ordered, home=home or "/", name=login)


def _group_id(groups: list[list[str]], text: str) -> int:
    number = _number(text)
    if number is not None:
        return number
    for entry in groups:
        if entry[0] == text and entry[2].isdigit():
            return int(entry[2])
    raise UserError(f"unable to find group {text}: no matching entries in group file")


def exists_in(root: str, path: str) -> bool:
    return os.path.exists(secure_join(root, path))
