"""Image references, parsed and normalized the way the docker CLI and dockerd do.

A reference is ``[domain/]path[:tag][@digest]``. Normalizing fills in what docker implies:
``busybox`` is ``docker.io/library/busybox:latest``, ``user/app:1`` is ``docker.io/user/app:1``.
The first path component is a registry domain only when it contains ``.`` or ``:`` or is
``localhost`` (or has an uppercase letter, which a repository name cannot). The familiar form
drops what was implied again, and is what ``docker images`` and ``RepoTags`` show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import BadRequest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

# The grammar of distribution/reference, written out piece by piece.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")

_DOMAIN_RE = re.compile(_DOMAIN)
_PATH_RE = re.compile(_PATH)
_TAG_RE = re.compile(_TAG)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ID_RE = re.compile(r"[0-9a-f]{64}")


class InvalidReference(BadRequest):
    """A string that is not a valid image reference (docker answers 400)."""


@dataclass(frozen=True)
class Reference:
    """A normalized reference: domain and path are always set, tag and digest may be empty."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The fully qualified repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository name as docker shows it, e.g. ``busybox`` or ``user/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX) :]:
            path = path[len(OFFICIAL_PREFIX) :]
        return path

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, self.digest)

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_domain = "." in first or ":" in first or first == "localhost"
    if not slash or not (looks_like_domain or first.lower() != first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalize ``text``; add ``default_tag`` when it has neither tag nor digest.

    Raises InvalidReference with docker's wording ("invalid reference format…").
    """
    if _ID_RE.fullmatch(text):
        raise InvalidReference(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    name, tag, digest = _split(text)
    domain, path = _split_domain(name)
    if path.lower() != path:
        raise InvalidReference(
            f"invalid reference format: repository name ({path}) must be lowercase"
        )
    if not _DOMAIN_RE.fullmatch(domain) or not _PATH_RE.fullmatch(path):
        raise InvalidReference(f"invalid reference format: {text!r} is not a valid image name")
    if len(f"{domain}/{path}") > NAME_MAX:
        raise InvalidReference(
            f"invalid reference format: repository name must not be more than {NAME_MAX} characters"
        )
    if not tag and not digest and default_tag:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def _split(text: str) -> tuple[str, str, str]:
    """Split into name, tag and digest, checking tag and digest syntax."""
    if not text:
        raise InvalidReference(
            "invalid reference format: repository name must have at least one component"
        )
    rest, at, digest = text.partition("@")
    if at:
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid reference format: bad digest in {text!r}")
        if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
            raise InvalidReference(
                f"invalid reference format: a sha256 digest needs 64 lowercase hex digits "
                f"({digest!r})"
            )
    # A tag is after the last ':' that comes after the last '/' (a port's ':' comes before).
    colon = rest.rfind(":")
    tag = ""
    name = rest
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {text!r}")
    if not name:
        raise InvalidReference("invalid reference format")
    return name, tag, digest


def familiar(ref: Reference | str) -> str:
    """The short form docker shows: ``busybox:latest``, ``localhost:5000/x:latest``."""
    if isinstance(ref, str):
        ref = parse(ref)
    return (
        ref.familiar_name
        + (f":{ref.tag}" if ref.tag else "")
        + (f"@{ref.digest}" if ref.digest else "")
    )


def is_full_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or a bare 64-hex image id."""
    return bool(_SHA256_RE.fullmatch(text) or _ID_RE.fullmatch(text))
