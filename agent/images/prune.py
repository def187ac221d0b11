"""`docker image prune`: remove the images no container uses (untagged ones by default)."""

from __future__ import annotations

import logging

from agent.errors import AgentError
from agent.images.filters import ImageFilter
from agent.images.store import DeleteRecords, Image, ImageNotFound, ImageStore

log = logging.getLogger(__name__)


def _layer_sizes(store: ImageStore, image: Image) -> dict[str, int]:
    sizes = {}
    for chain in image.chain_ids:
        try:
            size = store.layer_meta(chain).get("size", 0)
        except AgentError:
            continue
        sizes[chain] = size if isinstance(size, int) else 0
    return sizes


def prune_images(
    store: ImageStore, filters: dict[str, list[str]], now: float | None = None
) -> tuple[DeleteRecords, int]:
    """What was untagged and deleted, and the bytes of the layers that went."""
    chosen = ImageFilter(filters, store.get, now=now, prune=True)
    records: DeleteRecords = []
    reclaimed = 0
    for image in store.list():
        if (store.in_use and store.in_use(image.id)) or not chosen.matches(image):
            continue
        sizes = _layer_sizes(store, image)
        done: DeleteRecords = []
        try:
            for tag in image.repo_tags:
                done += store.delete(tag)
            if not any(r.get("Deleted") == image.id for r in done):
                done += store.delete(image.id, force=True)  # digests, or no tags at all
        except ImageNotFound:
            pass  # removed meanwhile
        except AgentError as error:  # e.g. a container started using it meanwhile
            log.info("prune keeps %s: %s", image.short_id, error.message)
        records += done
        reclaimed += sum(sizes.get(r.get("Deleted", ""), 0) for r in done)
    return records, reclaimed
