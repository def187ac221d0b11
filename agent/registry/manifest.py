"""Image manifests and indexes (Docker schema 2 and OCI), and choosing a platform."""

from __future__ import annotations

import json
import platform as host_platform
import re
from dataclasses import dataclass
from typing import Any

from agent.errors import BadRequest, NotFound
from agent.registry.client import RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

# layer media types we can unpack (foreign/nondistributable layers are refused)
_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: list[Descriptor]


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip
_VARIANT = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6"}


def engine_platform(machine: str = "") -> Platform:
    machine = machine or host_platform.machine()
    return Platform("linux", _ARCH.get(machine, machine), _VARIANT.get(machine, ""))


def parse_platform(text: str) -> Platform | None:
    """``os[/arch[/variant]]`` as `docker pull --platform` sends it; "" → None."""
    if not text:
        return None
    parts = text.strip().lower().split("/")
    if len(parts) > 3 or not all(parts):
        raise BadRequest(f"invalid platform {text!r}: expected os[/arch[/variant]]")
    default = engine_platform()
    if len(parts) == 1:
        return Platform(parts[0], default.architecture, default.variant)
    arch = _ARCH.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else "")


def _descriptor(data: object, what: str) -> Descriptor:
    if not isinstance(data, dict):
        raise RegistryError(502, f"invalid manifest: {what} is not an object")
    digest, size = data.get("digest"), data.get("size")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise RegistryError(502, f"invalid manifest: {what} has no sha256 digest")
    if not isinstance(size, int) or size < 0:
        raise RegistryError(502, f"invalid manifest: {what} has no size")
    urls = data.get("urls") or ()
    return Descriptor(str(data.get("mediaType") or ""), digest, size, tuple(str(u) for u in urls))


def load(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryError(502, "the registry sent a manifest that is not JSON") from None
    if not isinstance(data, dict):
        raise RegistryError(502, "the registry sent a manifest that is not a JSON object")
    return data


def kind(data: dict[str, Any], content_type: str) -> str:
    """The manifest's media type, from its body (trusted over the header) or the header."""
    media = str(data.get("mediaType") or content_type.split(";")[0].strip())
    if media in SCHEMA1_TYPES or data.get("schemaVersion") == 1:
        raise RegistryError(
            400, "this image uses the deprecated schema 1 manifest format; it cannot be pulled"
        )
    if media not in (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX):
        # an OCI document without mediaType: an index has "manifests", an image "config"
        if "manifests" in data:
            return OCI_INDEX
        if "config" in data:
            return OCI_MANIFEST
        raise RegistryError(400, f"unsupported manifest media type {media!r}")
    return media


def image_manifest(data: dict[str, Any]) -> ImageManifest:
    config = _descriptor(data.get("config"), "config")
    layers_data = data.get("layers")
    if not isinstance(layers_data, list):
        raise RegistryError(502, "invalid manifest: no layers list")
    layers = [_descriptor(d, f"layer {i + 1}") for i, d in enumerate(layers_data)]
    for index, layer in enumerate(layers):
        if layer.media_type and layer.media_type not in _LAYER_TYPES:
            raise RegistryError(
                400,
                f"layer {index + 1} has media type {layer.media_type!r}, which cannot be unpacked",
            )
    return ImageManifest(config, layers)


def _entry_platform(entry: dict[str, Any]) -> Platform | None:
    raw = entry.get("platform")
    if not isinstance(raw, dict):
        return None
    return Platform(
        str(raw.get("os") or ""), str(raw.get("architecture") or ""), str(raw.get("variant") or "")
    )


def _variant_rank(wanted: Platform, found: Platform) -> int | None:
    """Lower is better; None when it does not fit. arm64 "v8" and "" are the same."""
    if found.os != wanted.os or found.architecture != wanted.architecture:
        return None
    if found.variant == wanted.variant:
        return 0
    if wanted.architecture == "arm64" and {found.variant, wanted.variant} <= {"", "v8"}:
        return 0
    if not wanted.variant:
        return 1  # any variant will do when none was asked for
    older = _arm_version(found.variant)
    newer = _arm_version(wanted.variant)
    if wanted.architecture == "arm" and 0 < older < newer:
        return 1 + newer - older  # an older ARM variant runs on a newer CPU; the newest wins
    return None


def _arm_version(variant: str) -> int:
    return int(variant[1:]) if re.fullmatch(r"v[0-9]+", variant) else 0


def choose(index: dict[str, Any], wanted: Platform) -> Descriptor:
    """The index entry for ``wanted``; NotFound in docker's words when there is none."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(502, "invalid image index: no manifests list")
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        found = _entry_platform(entry)
        if found is None:
            continue
        rank = _variant_rank(wanted, found)
        if rank is None:
            continue
        if best is None or (rank, position) < best:
            best, chosen = (rank, position), _descriptor(entry, f"index entry {position + 1}")
    if chosen is None:
        raise NotFound(f"no matching manifest for {wanted} in the manifest list entries")
    return chosen
