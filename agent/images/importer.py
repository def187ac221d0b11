"""`docker import`: a root filesystem tarball (maybe compressed) becomes a one-layer image.

As dockerd does it: the layer is the uncompressed tarball itself (its DiffID is the
sha256 of that), the config is empty but for the ``--change`` instructions, and the
history has one entry whose comment says where the tarball came from.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, BinaryIO

from agent import sysinfo
from agent.errors import BadRequest
from agent.images.config_changes import apply_changes
from agent.images.store import Image, ImageStore


def parse_platform(text: str) -> tuple[str, str, str]:
    """``os[/arch[/variant]]`` (the host's when empty) -> (os, architecture, variant)."""
    parts = text.strip().lower().split("/") if text.strip() else []
    if len(parts) > 3 or any(not part for part in parts):
        raise BadRequest(f"invalid platform {text!r}: expected os[/arch[/variant]]")
    os_name = parts[0] if parts else "linux"
    if os_name != "linux":
        raise BadRequest(f'operating system "{os_name}" is not supported (only linux is)')
    architecture = parts[1] if len(parts) > 1 else sysinfo.go_arch()
    variant = parts[2] if len(parts) > 2 else ""
    return os_name, architecture, variant


def now_rfc3339() -> str:
    moment = datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def import_config(
    diff_id: str,
    config: dict[str, Any],
    comment: str,
    platform: tuple[str, str, str],
    created: str,
) -> bytes:
    """The image config of an imported tarball."""
    os_name, architecture, variant = platform
    document: dict[str, Any] = {
        "architecture": architecture,
        "comment": comment,
        "config": config,
        "created": created,
        "history": [{"created": created, "comment": comment}],
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    if variant:
        document["variant"] = variant
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def import_tarball(
    store: ImageStore,
    body: BinaryIO,
    changes: list[str],
    message: str = "",
    platform: str = "",
    source: str = "-",
) -> Image:
    """Store ``body`` as a new image. Changes and platform are checked before it is read."""
    config = apply_changes({}, changes)
    target = parse_platform(platform)
    comment = message or f"Imported from {source}"
    created = now_rfc3339()
    return store.add_layer_image(
        body, lambda diff_id: import_config(diff_id, config, comment, target, created)
    )
