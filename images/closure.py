"""Dependency closure over package records: a pure function, no apt involved.

apt's resolver would do, but it wants a dpkg status database and installs Recommends,
Essential packages and maintainer-script helpers a RAM-root guest never runs. This one
follows only Pre-Depends and Depends, honours an exclude list, and explains failures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from images.debversion import satisfies
from images.records import Dependency, PackageRecord

_Chooser = Callable[[str, tuple[str, ...]], None]


class ClosureError(Exception):
    """A dependency cannot be satisfied; `chain` is the path from a root to the culprit."""

    def __init__(self, message: str, chain: tuple[str, ...]) -> None:
        super().__init__(message)
        self.chain = chain


@dataclass
class Closure:
    packages: dict[str, PackageRecord]  # chosen name -> record
    reasons: dict[str, tuple[str, ...]]  # chosen name -> chain of names from a root
    skipped: list[str] = field(default_factory=list)  # "pkg: dep (excluded)" notes
    version_warnings: list[str] = field(default_factory=list)


def _providers(records: Mapping[str, PackageRecord]) -> dict[str, list[str]]:
    providers: dict[str, list[str]] = {}
    for record in records.values():
        for virtual in record.provides:
            providers.setdefault(virtual, []).append(record.name)
    for names in providers.values():
        names.sort()  # deterministic choice among several providers
    return providers


def resolve_closure(
    records: Mapping[str, PackageRecord],
    roots: Iterable[str],
    excludes: Iterable[str] = (),
) -> Closure:
    """Return the packages needed by `roots`, breadth first, never entering `excludes`.

    A dependency group (`a | b | c`) is:
    - skipped when any alternative is excluded (so `debconf | debconf-2.0` pulls nothing),
    - satisfied by an alternative already chosen (directly or through its Provides),
    - else satisfied by the first alternative that exists as a real package, or as a
      virtual package with a non-excluded provider.
    Version constraints never change the choice; unmet ones are reported as warnings.
    """
    excluded = set(excludes)
    providers = _providers(records)
    chosen: dict[str, PackageRecord] = {}
    reasons: dict[str, tuple[str, ...]] = {}
    provided_by: dict[str, str] = {}  # virtual or real name -> chosen package providing it
    closure = Closure(chosen, reasons)
    queue: deque[str] = deque()

    def choose(name: str, chain: tuple[str, ...]) -> None:
        record = records[name]
        chosen[name] = record
        reasons[name] = chain
        provided_by.setdefault(name, name)
        for virtual in record.provides:
            provided_by.setdefault(virtual, name)
        queue.append(name)

    for root in roots:
        if root in excluded:
            raise ClosureError(f"root package {root!r} is also excluded", (root,))
        if root in chosen:
            continue
        if root not in records:
            hint = f" (provided by: {', '.join(providers[root])})" if root in providers else ""
            raise ClosureError(f"root package {root!r} is not in the package lists{hint}", (root,))
        choose(root, (root,))

    while queue:
        name = queue.popleft()
        chain = reasons[name]
        for group in chosen[name].depends:
            _satisfy_group(
                group, name, chain, records, providers, excluded, provided_by, closure, choose
            )
    return closure


def _satisfy_group(
    group: tuple[Dependency, ...],
    parent: str,
    chain: tuple[str, ...],
    records: Mapping[str, PackageRecord],
    providers: Mapping[str, list[str]],
    excluded: set[str],
    provided_by: Mapping[str, str],
    closure: Closure,
    choose: _Chooser,
) -> None:
    text = " | ".join(str(dep) for dep in group)
    if any(dep.name in excluded for dep in group):
        closure.skipped.append(f"{parent}: {text} (excluded)")
        return
    for dep in group:
        if dep.name in provided_by:
            _check_version(dep, provided_by[dep.name], parent, records, closure)
            return
    for dep in group:
        if dep.name in records:
            choose(dep.name, (*chain, dep.name))
            _check_version(dep, dep.name, parent, records, closure)
            return
        candidates = [p for p in providers.get(dep.name, ()) if p not in excluded]
        if candidates:
            choose(candidates[0], (*chain, candidates[0]))
            return
    raise ClosureError(
        f"cannot satisfy '{text}' needed by {' -> '.join(chain)}: no such package or provider",
        (*chain, group[0].name),
    )


def _check_version(
    dep: Dependency,
    chosen_name: str,
    parent: str,
    records: Mapping[str, PackageRecord],
    closure: Closure,
) -> None:
    # A virtual package has no version of its own; only a real name can be checked.
    if not dep.relation or chosen_name != dep.name:
        return
    version = records[chosen_name].version
    if not satisfies(version, dep.relation, dep.version):
        closure.version_warnings.append(f"{parent} wants {dep}, lists have {version}")
