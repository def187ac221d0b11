"""Image references parse and normalize as docker's do."""

from __future__ import annotations

import pytest

from agent.images.reference import InvalidReference, Reference, familiar, is_full_id, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "normalized", "short"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("user/app:1", "docker.io/user/app:1", "user/app:1"),
        ("docker.io/user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("index.docker.io/library/x", "docker.io/library/x:latest", "x:latest"),
        ("docker.io/x", "docker.io/library/x:latest", "x:latest"),
        ("library/x:2", "docker.io/library/x:2", "x:2"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest"),
        ("127.0.0.1:5000/a/b:tag", "127.0.0.1:5000/a/b:tag", "127.0.0.1:5000/a/b:tag"),
        ("ghcr.io/o/r:v1.2_rc-3", "ghcr.io/o/r:v1.2_rc-3", "ghcr.io/o/r:v1.2_rc-3"),
        ("team__x/e--f.g", "docker.io/team__x/e--f.g:latest", "team__x/e--f.g:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
        (
            f"busybox:1.36@{DIGEST}",
            f"docker.io/library/busybox:1.36@{DIGEST}",
            f"busybox:1.36@{DIGEST}",
        ),
        ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000/x:y"),
    ],
)
def test_normalizes_and_shortens(text: str, normalized: str, short: str) -> None:
    ref = parse(text)
    assert str(ref) == normalized
    assert familiar(ref) == short
    assert familiar(text) == short
    assert parse(str(ref)) == ref  # normalizing is idempotent


def test_fields_and_names() -> None:
    ref = parse("localhost:5000/team/app:v2")
    assert ref == Reference("localhost:5000", "team/app", "v2", "")
    assert ref.name == "localhost:5000/team/app"
    assert ref.familiar_name == "localhost:5000/team/app"
    official = parse("busybox")
    assert (official.domain, official.path, official.tag) == (
        "docker.io",
        "library/busybox",
        "latest",
    )
    assert official.familiar_name == "busybox"
    # library/ is dropped only for one-component official names
    assert parse("library/a/b").familiar_name == "library/a/b"


def test_default_tag_only_without_tag_or_digest() -> None:
    assert parse("busybox", default_tag=None).tag == ""
    assert parse(f"busybox@{DIGEST}").tag == ""
    assert parse(f"busybox@{DIGEST}").digest == DIGEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "BusyBox",
            "invalid reference format: repository name (library/BusyBox) must be lowercase",
        ),
        ("user/App", "must be lowercase"),
        ("busybox:", "invalid reference format"),
        ("busybox:-x", "invalid reference format"),
        ("busybox:" + "t" * 129, "invalid reference format"),
        ("busybox@sha256:abc", "invalid reference format"),
        (f"busybox@sha256:{'AB' * 32}", "invalid reference format"),
        ("bad name", "invalid reference format"),
        ("a//b", "invalid reference format"),
        ("-lead", "invalid reference format"),
        ("", "invalid reference format"),
        ("ab" * 32, "cannot specify 64-byte hexadecimal strings"),
        ("x/" + "a" * 260, "must not be more than 255 characters"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse(text)
    assert message in str(caught.value)
    assert caught.value.status == 400


def test_uppercase_first_component_is_a_registry() -> None:
    # docker treats a first component with capitals as a registry host, not a repository
    assert parse("Registry/app") == Reference("Registry", "app", "latest")


def test_is_full_id() -> None:
    assert is_full_id("sha256:" + "0" * 64)
    assert is_full_id("f" * 64)
    assert not is_full_id("sha256:" + "0" * 63)
    assert not is_full_id("busybox")
