"""Parsing Packages stanzas and Debian version ordering."""

from __future__ import annotations

import pytest

from images.debversion import compare_versions, satisfies
from images.records import Dependency, iter_stanzas, newest_records, parse_dependencies


def test_parse_dependencies_handles_alternatives_versions_and_qualifiers() -> None:
    groups = parse_dependencies(
        "libc6 (>= 2.34), python3:any, debconf (>= 0.5) | debconf-2.0, foo [amd64] <!nocheck>"
    )
    assert groups == (
        (Dependency("libc6", ">=", "2.34"),),
        (Dependency("python3"),),
        (Dependency("debconf", ">=", "0.5"), Dependency("debconf-2.0")),
        (Dependency("foo"),),
    )


def test_parse_dependencies_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_dependencies("libc6 (>= 2.34")


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("1.0", "1.0", 0),
        ("1.0~rc1", "1.0", -1),
        ("1.0", "1.0+b1", -1),
        ("1:0.9", "2.0", 1),
        ("2.36-9+deb12u14", "2.36-9+deb12u4", 1),
        ("6.1.192-2", "6.1.176-1", 1),
        ("1.0a", "1.0", 1),
        ("1.0-1", "1.0-1~bpo1", 1),
        ("3.0.22-1~deb12u2", "3.0.22-1", -1),
    ],
)
def test_compare_versions(left: str, right: str, expected: int) -> None:
    assert compare_versions(left, right) == expected
    assert compare_versions(right, left) == -expected


def test_satisfies() -> None:
    assert satisfies("2.36", ">=", "2.34")
    assert not satisfies("2.36", "<<", "2.34")
    assert satisfies("1:9.2p1-2", "=", "1:9.2p1-2")


LISTS = """\
Package: libc6
Version: 2.36-9+deb12u4
Architecture: amd64
Depends: libgcc-s1
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb
SHA256: aaaa
Size: 10

Package: libc6
Version: 2.36-9+deb12u14
Architecture: amd64
Description: the newer one
 with a continuation line
Filename: pool/updates/libc6_new.deb
SHA256: bbbb
Size: 20

Package: libc6
Version: 9.99
Architecture: arm64

Package: tzdata
Version: 2024a
Architecture: all
Provides: tzdata-bookworm
"""


def test_newest_records_picks_highest_version_of_matching_arch() -> None:
    records = newest_records(iter_stanzas(LISTS), "amd64")
    assert set(records) == {"libc6", "tzdata"}
    assert records["libc6"].version == "2.36-9+deb12u14"
    assert records["libc6"].sha256 == "bbbb"
    assert records["libc6"].size == 20
    assert records["tzdata"].provides == ("tzdata-bookworm",)


def test_iter_stanzas_joins_continuation_lines() -> None:
    stanza = list(iter_stanzas(LISTS))[1]
    assert stanza["Description"] == "the newer one\nwith a continuation line"
