"""Size limits of the HTTP layer, in one place so tests and later handlers can refer to them."""

from __future__ import annotations


class Limits:
    """Per-connection limits; the defaults suit the Engine API (large bodies are streamed)."""

    __slots__ = ("max_head", "max_headers", "max_body", "max_drain", "max_chunk_line")

    def __init__(
        self,
        max_head: int = 256 * 1024,
        max_headers: int = 200,
        max_body: int = 16 * 1024 * 1024,
        max_drain: int = 1024 * 1024,
        max_chunk_line: int = 4096,
    ) -> None:
        # request line + header lines; beyond it: 431 (X-Registry-Config can be a few KiB)
        self.max_head = max_head
        # header fields per request; beyond it: 431
        self.max_headers = max_headers
        # bodies read whole into memory (JSON); beyond it: 413. Tar uploads are streamed.
        self.max_body = max_body
        # unread body bytes we discard to keep a connection alive; beyond it we close instead
        self.max_drain = max_drain
        # a chunk-size line of a chunked request body
        self.max_chunk_line = max_chunk_line


DEFAULT_LIMITS = Limits()
