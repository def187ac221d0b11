"""ADD of a URL: the download (name, mode, Last-Modified) and its failure message."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.build.errors import BuildError
from agent.build.fetch import download, file_name


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.split("?")[0] != "/files/tool.sh":
            self.send_error(404)
            return
        body = b"#!/bin/sh\necho tool\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Wed, 01 Jan 2020 00:00:00 GMT")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download(server: str, tmp_path: Path) -> None:
    source = download(f"{server}/files/tool.sh?x=1", tmp_path)
    assert source.name == "tool.sh" and not source.is_dir
    assert Path(source.path).read_bytes() == b"#!/bin/sh\necho tool\n"
    info = os.stat(source.path)
    assert info.st_mode & 0o777 == 0o600
    assert int(info.st_mtime) == 1577836800


def test_download_failure_is_a_clear_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"ADD failed: cannot download .*/missing"):
        download(f"{server}/missing", tmp_path)


def test_file_name() -> None:
    assert file_name("https://example.com/a/b.tar.gz") == "b.tar.gz"
    assert file_name("https://example.com/") == "__unnamed__"
