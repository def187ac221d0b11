"""The agent's local image store: references, layer extraction, the store, `docker load`."""

from agent.images.archive import ArchiveError, LoadedImage, load_archive
from agent.images.layers import LayerError, LayerInfo, extract_layer
from agent.images.reference import InvalidReference, Reference, familiar, parse
from agent.images.store import Image, ImageInUse, ImageNotFound, ImageStore, InvalidImage

__all__ = [
    "ArchiveError",
    "Image",
    "ImageInUse",
    "ImageNotFound",
    "ImageStore",
    "InvalidImage",
    "InvalidReference",
    "LayerError",
    "LayerInfo",
    "LoadedImage",
    "Reference",
    "extract_layer",
    "familiar",
    "load_archive",
    "parse",
]
