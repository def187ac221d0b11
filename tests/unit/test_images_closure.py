"""The dependency resolver, on hand-made package records."""

from __future__ import annotations

import pytest

from images.closure import ClosureError, resolve_closure
from images.records import PackageRecord, parse_dependencies, parse_provides


def pkg(name: str, depends: str = "", provides: str = "", version: str = "1.0") -> PackageRecord:
    return PackageRecord(
        name, version, depends=parse_dependencies(depends), provides=parse_provides(provides)
    )


def index(*records: PackageRecord) -> dict[str, PackageRecord]:
    return {r.name: r for r in records}


def test_follows_depends_transitively() -> None:
    records = index(pkg("app", "libfoo, libbar"), pkg("libfoo", "libc"), pkg("libbar"), pkg("libc"))
    closure = resolve_closure(records, ["app"])
    assert set(closure.packages) == {"app", "libfoo", "libbar", "libc"}
    assert closure.reasons["libc"] == ("app", "libfoo", "libc")


def test_unrelated_packages_are_left_out() -> None:
    records = index(pkg("app", "libc"), pkg("libc"), pkg("other"))
    assert set(resolve_closure(records, ["app"]).packages) == {"app", "libc"}


def test_first_available_alternative_wins() -> None:
    records = index(pkg("app", "missing | second | third"), pkg("second"), pkg("third"))
    assert set(resolve_closure(records, ["app"]).packages) == {"app", "second"}


def test_alternative_already_chosen_is_preferred() -> None:
    records = index(pkg("app", "first | second"), pkg("first"), pkg("second"))
    closure = resolve_closure(records, ["second", "app"])
    assert set(closure.packages) == {"app", "second"}


def test_virtual_package_resolves_through_provides() -> None:
    records = index(
        pkg("app", "mail-transport-agent"),
        pkg("postfix", provides="mail-transport-agent"),
        pkg("exim", provides="mail-transport-agent"),
    )
    closure = resolve_closure(records, ["app"])
    # Several providers: the choice is deterministic (sorted by name).
    assert set(closure.packages) == {"app", "exim"}


def test_virtual_package_satisfied_by_chosen_provider() -> None:
    records = index(
        pkg("app", "virtual"),
        pkg("aaa", provides="virtual"),
        pkg("zzz", provides="virtual"),
    )
    assert set(resolve_closure(records, ["zzz", "app"]).packages) == {"app", "zzz"}


def test_real_package_name_also_provided_by_a_chosen_package() -> None:
    records = index(pkg("app", "awk"), pkg("awk"), pkg("busybox", provides="awk"))
    assert set(resolve_closure(records, ["busybox", "app"]).packages) == {"app", "busybox"}


def test_cycles_terminate() -> None:
    records = index(pkg("a", "b"), pkg("b", "c"), pkg("c", "a"))
    assert set(resolve_closure(records, ["a"]).packages) == {"a", "b", "c"}


def test_excluded_package_is_skipped_and_reported() -> None:
    records = index(pkg("app", "dpkg, libc"), pkg("dpkg", "perl"), pkg("perl"), pkg("libc"))
    closure = resolve_closure(records, ["app"], excludes=["dpkg"])
    assert set(closure.packages) == {"app", "libc"}
    assert closure.skipped == ["app: dpkg (excluded)"]


def test_group_naming_an_excluded_alternative_is_skipped_whole() -> None:
    records = index(pkg("app", "debconf | debconf-2.0"), pkg("cdebconf", provides="debconf-2.0"))
    closure = resolve_closure(records, ["app"], excludes=["debconf"])
    assert set(closure.packages) == {"app"}


def test_excluded_provider_is_not_chosen() -> None:
    records = index(pkg("app", "virt"), pkg("bad", provides="virt"), pkg("good", provides="virt"))
    closure = resolve_closure(records, ["app"], excludes=["bad"])
    assert set(closure.packages) == {"app", "good"}


def test_missing_dependency_names_the_chain() -> None:
    records = index(pkg("app", "mid"), pkg("mid", "ghost | phantom"))
    with pytest.raises(ClosureError) as caught:
        resolve_closure(records, ["app"])
    assert caught.value.chain == ("app", "mid", "ghost")
    assert "ghost | phantom" in str(caught.value)
    assert "app -> mid" in str(caught.value)


def test_missing_root_is_an_error() -> None:
    with pytest.raises(ClosureError, match="not in the package lists"):
        resolve_closure(index(pkg("a")), ["nope"])


def test_excluded_root_is_an_error() -> None:
    with pytest.raises(ClosureError, match="also excluded"):
        resolve_closure(index(pkg("a")), ["a"], excludes=["a"])


def test_version_constraints_do_not_change_the_choice_but_are_reported() -> None:
    records = index(pkg("app", "libc (>= 2.40)"), pkg("libc", version="2.36-9"))
    closure = resolve_closure(records, ["app"])
    assert set(closure.packages) == {"app", "libc"}
    assert closure.version_warnings == ["app wants libc (>= 2.40), lists have 2.36-9"]


def test_satisfied_version_constraint_gives_no_warning() -> None:
    records = index(pkg("app", "libc (>= 2.34)"), pkg("libc", version="2.36-9"))
    assert resolve_closure(records, ["app"]).version_warnings == []


def test_pre_depends_are_followed() -> None:
    from images.records import record_from_stanza

    app = record_from_stanza(
        {"Package": "app", "Version": "1", "Pre-Depends": "libc6 (>= 2.34)", "Depends": "zlib1g"}
    )
    records = index(app, pkg("libc6"), pkg("zlib1g"))
    assert set(resolve_closure(records, ["app"]).packages) == {"app", "libc6", "zlib1g"}
