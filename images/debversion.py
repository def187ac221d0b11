"""Debian version ordering (deb-version(7)), needed to pick the newest of several suites."""

from __future__ import annotations

import functools
import re

_EPOCH = re.compile(r"^(\d+):")


def _split(version: str) -> tuple[int, str, str]:
    epoch = 0
    match = _EPOCH.match(version)
    if match:
        epoch = int(match.group(1))
        version = version[match.end() :]
    upstream, sep, revision = version.rpartition("-")
    if not sep:
        return epoch, version, ""
    return epoch, upstream, revision


def _order(char: str) -> int:
    # '~' sorts before everything, even the end of the string; letters before other symbols.
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(left: str, right: str) -> int:
    i = j = 0
    while i < len(left) or j < len(right):
        # Non-digit run, compared character by character with the ordering above.
        while (i < len(left) and not left[i].isdigit()) or (
            j < len(right) and not right[j].isdigit()
        ):
            lc = _order(left[i]) if i < len(left) and not left[i].isdigit() else 0
            rc = _order(right[j]) if j < len(right) and not right[j].isdigit() else 0
            if lc != rc:
                return -1 if lc < rc else 1
            if i < len(left) and not left[i].isdigit():
                i += 1
            if j < len(right) and not right[j].isdigit():
                j += 1
        # Digit run, compared numerically (an empty run counts as zero).
        li = i
        while i < len(left) and left[i].isdigit():
            i += 1
        rj = j
        while j < len(right) and right[j].isdigit():
            j += 1
        ln = int(left[li:i] or "0")
        rn = int(right[rj:j] or "0")
        if ln != rn:
            return -1 if ln < rn else 1
    return 0


def compare_versions(left: str, right: str) -> int:
    """Return -1, 0 or 1 as `left` is older than, equal to or newer than `right`."""
    le, lu, lr = _split(left)
    re_, ru, rr = _split(right)
    if le != re_:
        return -1 if le < re_ else 1
    return _compare_part(lu, ru) or _compare_part(lr, rr)


def satisfies(version: str, relation: str, wanted: str) -> bool:
    """Whether `version` meets a Depends constraint like (>= 1.2)."""
    cmp = compare_versions(version, wanted)
    return {
        "<<": cmp < 0,
        "<=": cmp <= 0,
        "=": cmp == 0,
        ">=": cmp >= 0,
        ">>": cmp > 0,
        "<": cmp <= 0,  # obsolete spellings, still legal
        ">": cmp >= 0,
    }.get(relation, True)


version_key = functools.cmp_to_key(compare_versions)
