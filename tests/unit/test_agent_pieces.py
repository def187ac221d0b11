"""Pure pieces of the agent: versions, routing, query parsing, machine facts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.api.request import parse_query, unquote
from agent.api.router import MethodNotAllowed, Router, compile_pattern, split_version
from agent.api.versions import (
    API_VERSION,
    MIN_API_VERSION,
    check_client_version,
    compare_versions,
)
from agent.daemon import readiness_line
from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.sysinfo import go_arch, os_description, parse_os_release, python_version


def test_served_versions() -> None:
    assert (API_VERSION, MIN_API_VERSION) == ("1.50", "1.24")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.50", "1.50", 0),
        ("1.9", "1.24", -1),  # numeric, not lexical
        ("1.100", "1.50", 1),
        ("1.50.0", "1.50", 0),
        ("2", "1.99", 1),
        ("1.x", "1.0", 0),  # like moby: a part that is not a number counts as 0
    ],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected


def test_check_client_version_bounds() -> None:
    check_client_version("1.24")
    check_client_version("1.50")
    with pytest.raises(BadRequest, match="too old"):
        check_client_version("1.23")
    with pytest.raises(BadRequest, match="too new"):
        check_client_version("1.51")


def test_errors_carry_their_status() -> None:
    assert AgentError(418, "teapot").status == 418
    assert (BadRequest("x").status, NotFound("x").status, Conflict("x").status) == (
        400,
        404,
        409,
    )
    assert str(NotFound("No such container: abc")) == "No such container: abc"


def test_split_version() -> None:
    assert split_version("/v1.50/containers/json") == ("1.50", "/containers/json")
    assert split_version("/_ping") == (None, "/_ping")
    assert split_version("/v1.50") == (None, "/v1.50")
    assert split_version("/vx/_ping") == (None, "/vx/_ping")


def test_compile_pattern() -> None:
    regex = compile_pattern("/containers/{id}/json")
    found = regex.fullmatch("/containers/abc/json")
    assert found is not None and found.groupdict() == {"id": "abc"}
    assert regex.fullmatch("/containers/a/b/json") is None
    greedy = compile_pattern("/images/{name:.+}/push")
    found = greedy.fullmatch("/images/localhost:5000/a/b/push")
    assert found is not None and found["name"] == "localhost:5000/a/b"
    assert compile_pattern("/a.b").fullmatch("/aXb") is None  # literals are escaped


def test_router_resolution_and_lazy_handlers() -> None:
    router = Router()
    router.add(("GET", "HEAD"), "/_ping", "agent.api.system:ping")
    router.add("DELETE", "/containers/{id}", "agent.api.system:version")
    match = router.resolve("HEAD", "/v1.41/_ping")
    assert (match.version, match.params) == ("1.41", {})
    from agent.api import system

    assert match.route.handler is system.ping  # imported on first use
    assert router.resolve("DELETE", "/containers/x").params == {"id": "x"}
    with pytest.raises(MethodNotAllowed) as not_allowed:
        router.resolve("PUT", "/_ping")
    assert not_allowed.value.allowed == ["GET", "HEAD"]
    with pytest.raises(NotFound, match="page not found"):
        router.resolve("GET", "/nothing")


def test_only_the_system_module_is_imported_at_start() -> None:
    # the route table must not pull handler modules in; they load on first request
    code = (
        "import sys, agent.__main__; "
        "print(sorted(m for m in sys.modules if m.startswith('agent.api.system')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert result.stdout.strip() == "[]"


FIRST_ANSWER = """
import socket, sys
import agent.__main__, agent.api.system
from agent.api.buffered_socket import BufferedSocket
from agent.api.limits import DEFAULT_LIMITS
from agent.api.request import read_request
from agent.api.response import ResponseWriter
from agent.api.routes import build_router
from agent.api.connection import handle_request
from agent.logsetup import configure_logging
agent.__main__.parse_args(ARGV)
from agent.network import host_gateway
host_gateway.configure("10.0.2.2")  # as main() does with --host-gateway
configure_logging(sys.argv[1])  # the access log line is held, not written: no logging
ours, theirs = socket.socketpair()
ours.sendall(b"GET /v1.50/_ping HTTP/1.1\\r\\nHost: engine\\r\\n\\r\\n")
conn = BufferedSocket(theirs)
request = read_request(conn, DEFAULT_LIMITS)
response = ResponseWriter(conn, request)
handle_request(build_router(), request, response)
assert ours.recv(4096).startswith(b"HTTP/1.1 200 OK")
print([m for m in HEAVY if m in sys.modules])
"""


def test_startup_avoids_heavy_modules(tmp_path: Path) -> None:
    """Everything up to the first answer (/_ping) stays off the slow imports.

    Under tcg in the VM these are seconds of the boot: logging alone, with what it imports,
    is ~0.3 s; json and re another ~0.2 s."""
    heavy = ["asyncio", "http.server", "http.client", "email", "urllib.request", "ssl",
             "dataclasses", "typing", "inspect", "platform", "subprocess", "argparse",
             "shutil", "logging", "json", "re", "traceback", "warnings", "datetime",
             "importlib", "shlex", "ipaddress"]  # fmt: skip
    code = FIRST_ANSWER.replace("ARGV", repr(SERVICE_ARGV)).replace("HEAVY", repr(heavy))
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(tmp_path / "agent.log")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert result.stdout.strip() == "[]"
    # written when the process ended
    assert "GET /v1.50/_ping -> 200" in (tmp_path / "agent.log").read_text()


# the options guest/rootfs/usr/lib/vmctl/service gives the agent in the VM
SERVICE_ARGV = [
    "--socket", "/run/vmctl/engine.sock", "--wait-for", "/run/vmctl/boot-done",
    "--log-file", "/var/lib/vmctl/log/agent.log", "--announce", "/dev/console",
    "--root", "/var/lib/vmctl", "--run-root", "/run/vmctl", "--host-gateway", "10.0.2.2",
    "--preload", "/usr/share/vmctl/images/busybox.tar", "--host-loopback", "10.0.2.2",
    "--published-on", "127.0.0.1", "--seed", "/run/vmctl/seed/config",
]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        SERVICE_ARGV,
        [],
        [
            "--socket=/tmp/s",
            "--log-level",
            "debug",
            "--insecure-registry",
            "a:5000",
            "--insecure-registry=b",
            "--certs-dir",
            "/c",
            "--seed=",
        ],
    ],  # fmt: skip
)
def test_quick_options_match_argparse(argv: list[str]) -> None:
    from agent.__main__ import full_parser, quick_parse

    quick = quick_parse(argv)
    assert quick is not None
    assert vars(quick) == vars(full_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["--bogus", "x"],
        ["-s", "x"],
        ["--socket"],
        ["--socket", "--root", "/r"],
        ["--log-level", "loud"],
        ["stray"],
    ],  # fmt: skip
)
def test_anything_unusual_is_left_to_argparse(argv: list[str]) -> None:
    from agent.__main__ import full_parser, quick_parse

    assert quick_parse(argv) is None
    with pytest.raises(SystemExit):  # help and version exit 0, errors 2: argparse's own
        full_parser().parse_args(argv)


def test_parse_query() -> None:
    assert parse_query("a=1&b=x&b=y+z&flag&=&c=%7B%22k%22%3A1%7D") == {
        "a": ["1"],
        "b": ["x", "y z"],
        "flag": [""],
        "": [""],
        "c": ['{"k":1}'],
    }
    assert parse_query("") == {}


def test_unquote() -> None:
    assert unquote("a%20b+c") == "a b+c"
    assert unquote("a+b", plus_is_space=True) == "a b"
    assert unquote("caf%C3%A9") == "café"
    assert unquote("100%") == "100%"  # an invalid escape stays as it is


def test_os_release(tmp_path: Path) -> None:
    text = (
        "# comment\n"
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        "NAME='Debian'\n"
        'QUOTED="say \\"hi\\""\n'
        "ID=debian\n"
    )
    assert parse_os_release(text) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "NAME": "Debian",
        "QUOTED": 'say "hi"',
        "ID": "debian",
    }
    release = tmp_path / "os-release"
    release.write_text(text)
    assert os_description((str(tmp_path / "missing"), str(release))) == (
        "Debian GNU/Linux 12 (bookworm)"
    )
    assert os_description((str(tmp_path / "missing"),)) == "Linux"


def test_go_arch() -> None:
    assert go_arch("x86_64") == "amd64"
    assert go_arch("aarch64") == "arm64"
    assert go_arch("armv7l") == "arm"
    assert go_arch("mips64") == "mips64"


def test_python_version() -> None:
    assert python_version() == "python{}.{}.{}".format(*sys.version_info[:3])


def test_readiness_line() -> None:
    line = readiness_line("/run/vmctl/engine.sock")
    assert line.startswith("VMCTL-READY agent=")
    assert line.endswith(" api=1.50 socket=/run/vmctl/engine.sock\n")


# -- the create body's shape ---------------------------------------------------------------


def test_create_body_refuses_unknown_and_mistyped_fields() -> None:
    import json
    from pathlib import Path

    from agent.api.create_body import check_create_body
    from agent.errors import BadRequest

    example = (
        Path(__file__).resolve().parents[3] / "shared/specs/cli-28.2.2-create-body-example.json"
    )
    if example.exists():  # what the docker CLI 28.2.2 really sends passes as it is
        check_create_body(json.loads(example.read_text()))
    good = {"Image": "busybox", "Cmd": "echo hi", "HostConfig": {"Memory": 0, "Dns": None}}
    check_create_body(good)
    assert good["Cmd"] == ["echo hi"]  # a StrSlice, as dockerd reads it
    bad = [
        ({"Image": 5}, "invalid type for Image: expected string, got number"),
        ({"Image": "b", "HostConfig": {"Memory": "lots"}}, "HostConfig.Memory: expected integer"),
        ({"Image": "b", "HostConfig": {"Memory": 1.5}}, "expected integer, got number"),
        ({"Image": "b", "HostConfig": {"Privileged": 1}}, "expected boolean"),
        ({"Image": "b", "Env": ["A=1", 2]}, "Env: expected list of strings"),
        ({"Image": "b", "Labels": {"a": 1}}, "Labels: expected object of strings"),
        ({"Image": "b", "Memmory": 5}, "unknown field Memmory"),
        ({"Image": "b", "HostConfig": {"Bogus": True}}, "unknown field HostConfig.Bogus"),
        ({"Image": "b", "HostConfig": []}, "HostConfig: expected object, got list"),
    ]
    for body, message in bad:
        try:
            check_create_body(body)
        except BadRequest as error:
            assert message in error.message, (body, error.message)
        else:
            raise AssertionError(f"accepted {body}")


def test_lazy_imports_take_turns_but_never_wait_for_a_loaded_module() -> None:
    import threading

    import agent.errors
    from agent import lazy_import

    assert lazy_import.import_module("agent.errors") is agent.errors
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lazy_import._LOCK:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        # another thread is importing: a module already loaded comes back at once
        assert lazy_import.import_module("agent.errors").__name__ == "agent.errors"
    finally:
        release.set()
        holder.join()


@pytest.mark.parametrize("address", ["10.0.2.2", "192.168.1.254"])
def test_host_gateway_takes_an_ipv4_address(address: str) -> None:
    from agent.network import host_gateway

    host_gateway.configure(address)
    try:
        assert host_gateway.configured() == address
    finally:
        host_gateway.configure("")


@pytest.mark.parametrize(
    "address", ["10.0.2", "10.0.2.256", "010.0.2.2", "::1", "host", "1.2.3.4 "]
)
def test_host_gateway_refuses_anything_else(address: str) -> None:
    from agent.network import host_gateway

    with pytest.raises(ValueError):
        host_gateway.configure(address)
    assert host_gateway.configured() == ""
