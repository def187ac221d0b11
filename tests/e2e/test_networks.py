"""Networks end to end: the seed's example in miniature, through the VM.

A "db" container serves a row over TCP (busybox httpd on port 3306); a "web" container
runs busybox httpd with a CGI script that asks `db` by name and prints the answer; web's
port 80 is published on the host's 127.0.0.1, and the host asks web. Once on a
user-defined network (db found by the embedded DNS), once on the default bridge with
`--link db:db` (db found through /etc/hosts).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.e2e.conftest import Engine

pytestmark = pytest.mark.e2e

DB_ROW = "rows: 42"
DB_SCRIPT = f"mkdir /db && echo '{DB_ROW}' > /db/answer && exec httpd -f -p 3306 -h /db"
WEB_SCRIPT = (
    "mkdir -p /www/cgi-bin && "
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
    "wget -q -O - http://db:3306/answer\\n' > /www/cgi-bin/q && "
    "chmod +x /www/cgi-bin/q && exec httpd -f -p 80 -h /www"
)


def free_host_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask_host(port: int, path: str, timeout: float = 60.0) -> str:
    """GET http://127.0.0.1:port/path from the host, retrying while the servers start."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError) as error:
            last = error
            time.sleep(0.5)
    raise AssertionError(f"127.0.0.1:{port}{path} did not answer in {timeout:.0f} s: {last}")


def test_web_asks_db_by_name_on_a_user_network(engine: Engine) -> None:
    network = f"t-net-{uuid.uuid4().hex[:8]}"
    engine.ok("network", "create", network)
    try:
        db, web = engine.name("db"), engine.name("web")
        engine.ok(
            "run", "-d", "--name", db, "--network", network, "--network-alias", "db",
            "busybox", "sh", "-c", DB_SCRIPT,
        )  # fmt: skip
        port = free_host_port()
        engine.ok(
            "run", "-d", "--name", web, "--network", network, "-p", f"{port}:80",
            "busybox", "sh", "-c", WEB_SCRIPT,
        )  # fmt: skip
        assert ask_host(port, "/cgi-bin/q").strip() == DB_ROW
        assert f"127.0.0.1:{port}" in engine.ok("port", web, "80")
    finally:
        engine.cleanup()
        engine.names.clear()
        engine.ok("network", "rm", network)


def test_web_asks_db_through_a_link_on_the_default_bridge(engine: Engine) -> None:
    db, web = engine.name("db"), engine.name("web")
    engine.ok("run", "-d", "--name", db, "busybox", "sh", "-c", DB_SCRIPT)
    port = free_host_port()
    engine.ok(
        "run", "-d", "--name", web, "--link", f"{db}:db", "-p", f"{port}:80",
        "busybox", "sh", "-c", WEB_SCRIPT,
    )  # fmt: skip
    assert ask_host(port, "/cgi-bin/q").strip() == DB_ROW
    # the port is withdrawn with the container: nothing answers on the host any more
    engine.ok("stop", "-t", "1", web)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
