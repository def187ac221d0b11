"""Package records: the parts of a Debian `Packages` stanza the builder needs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from images.debversion import compare_versions


@dataclass(frozen=True)
class Dependency:
    """One alternative of a Depends entry, e.g. `libc6 (>= 2.34)`."""

    name: str
    relation: str = ""
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.relation} {self.version})" if self.relation else self.name


# A Depends field is a list of groups; a group is a list of alternatives (`a | b`).
DependencyGroups = tuple[tuple[Dependency, ...], ...]


@dataclass(frozen=True)
class PackageRecord:
    name: str
    version: str
    depends: DependencyGroups = ()  # Pre-Depends first, then Depends
    provides: tuple[str, ...] = ()
    filename: str = ""  # path below the mirror root
    sha256: str = ""
    size: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


_DEP = re.compile(
    r"^\s*(?P<name>[a-z0-9][a-z0-9+.\-]*)(?::[a-z0-9\-]+)?"  # arch qualifier (:any) is dropped
    r"\s*(?:\(\s*(?P<rel><<|<=|=|>=|>>|<|>)\s*(?P<ver>[^)\s]+)\s*\))?"
    r"\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"  # arch and build-profile restrictions, unused
)


def parse_dependencies(text: str) -> DependencyGroups:
    """Parse a Depends-style field into groups of alternatives."""
    groups: list[tuple[Dependency, ...]] = []
    for group_text in text.split(","):
        if not group_text.strip():
            continue
        alternatives: list[Dependency] = []
        for alt in group_text.split("|"):
            match = _DEP.match(alt)
            if not match:
                raise ValueError(f"cannot parse dependency {alt.strip()!r}")
            alternatives.append(Dependency(match["name"], match["rel"] or "", match["ver"] or ""))
        groups.append(tuple(alternatives))
    return tuple(groups)


def parse_provides(text: str) -> tuple[str, ...]:
    # Provides may carry a version (`foo (= 1.0)`); only the name matters to the resolver.
    return tuple(dep.name for group in parse_dependencies(text) for dep in group)


def iter_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Split deb822 text into dicts of field -> value (continuation lines joined)."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if not line:
                continue
            if line[0] in " \t":
                if key:
                    fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields:
            yield fields


# Fields kept in memory: the lists hold ~60k stanzas and only these are ever read.
_KEPT = ("Package", "Version", "Depends", "Pre-Depends", "Provides", "Filename", "SHA256", "Size")


def record_from_stanza(fields: dict[str, str]) -> PackageRecord:
    depends = parse_dependencies(fields.get("Pre-Depends", "")) + parse_dependencies(
        fields.get("Depends", "")
    )
    return PackageRecord(
        name=fields["Package"],
        version=fields["Version"],
        depends=depends,
        provides=parse_provides(fields.get("Provides", "")),
        filename=fields.get("Filename", ""),
        sha256=fields.get("SHA256", ""),
        size=int(fields.get("Size", "0") or 0),
    )


def newest_records(stanzas: Iterable[dict[str, str]], arch: str) -> dict[str, PackageRecord]:
    """Index stanzas by package name, keeping the highest version of each.

    Several suites (bookworm, -updates, -security) list the same package; apt's default
    policy installs the newest, and so does the builder.
    """
    best: dict[str, dict[str, str]] = {}
    for fields in stanzas:
        if fields.get("Architecture") not in (arch, "all"):
            continue
        name = fields.get("Package")
        if not name or "Version" not in fields:
            continue
        current = best.get(name)
        if current is None or compare_versions(fields["Version"], current["Version"]) > 0:
            best[name] = {k: fields[k] for k in _KEPT if k in fields} | {
                "Architecture": fields["Architecture"]
            }
    return {name: record_from_stanza(fields) for name, fields in best.items()}
