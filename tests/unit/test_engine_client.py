"""vmctl's Engine API client and container verbs, without an engine: bodies, framing, HTTP."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.humanize import human_duration
from vmctl import containers_cli as cc
from vmctl.cli import build_parser, strip_debug
from vmctl.engine_client import (
    EngineClient,
    EngineError,
    FrameDemuxer,
    HttpExchange,
    create_body,
    exec_body,
    frame,
)
from vmctl.errors import VmctlError

# What docker CLI 28.2.2 sent for `docker run -d --name web -e A=1 -p 8080:80 -v vol1:/data
# --memory 64m --cpus 0.5 --pids-limit 50 busybox sleep 100` (recorded; see the notes).
ENDPOINT = {
    "IPAMConfig": None,
    "Links": None,
    "Aliases": None,
    "MacAddress": "",
    "DriverOpts": None,
    "GwPriority": 0,
    "NetworkID": "",
    "EndpointID": "",
    "Gateway": "",
    "IPAddress": "",
    "IPPrefixLen": 0,
    "IPv6Gateway": "",
    "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0,
    "DNSNames": None,
}
DOCKER_BODY: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "ExposedPorts": {"80/tcp": {}},
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": ["A=1"],
    "Cmd": ["sleep", "100"],
    "Image": "busybox",
    "Volumes": {},
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": {},
    "HostConfig": {
        "Binds": ["vol1:/data"],
        "ContainerIDFile": "",
        "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "default",
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": False,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": [0, 0],
        "CapAdd": None,
        "CapDrop": None,
        "CgroupnsMode": "",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "GroupAdd": None,
        "IpcMode": "",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": False,
        "PublishAllPorts": False,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "Isolation": "",
        "CpuShares": 0,
        "Memory": 67108864,
        "NanoCpus": 500000000,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": [],
        "BlkioDeviceWriteBps": [],
        "BlkioDeviceReadIOps": [],
        "BlkioDeviceWriteIOps": [],
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "CpusetCpus": "",
        "CpusetMems": "",
        "Devices": [],
        "DeviceCgroupRules": None,
        "DeviceRequests": None,
        "MemoryReservation": 0,
        "MemorySwap": 0,
        "MemorySwappiness": -1,
        "OomKillDisable": False,
        "PidsLimit": 50,
        "Ulimits": [],
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    },
    "NetworkingConfig": {"EndpointsConfig": {"default": ENDPOINT}},
}


def run_body(*argv: str, size: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    args = build_parser().parse_args(["run", *argv])
    return create_body(cc.run_options(args, size))


# -- create body ------------------------------------------------------------------------


def test_create_body_is_what_docker_sends() -> None:
    body = run_body(
        "-d", "--name", "web", "-e", "A=1", "-p", "8080:80", "-v", "vol1:/data",
        "--memory", "64m", "--cpus", "0.5", "--pids-limit", "50", "busybox", "sleep", "100",
    )  # fmt: skip
    assert body == DOCKER_BODY
    # same keys in the same order, so the JSON text matches docker's too
    assert list(body) == list(DOCKER_BODY)
    assert list(body["HostConfig"]) == list(DOCKER_BODY["HostConfig"])


def test_foreground_interactive_tty_body() -> None:
    body = run_body(
        "-it", "--rm", "--entrypoint", "", "--init", "--network", "none", "--privileged",
        "--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD", "-u", "nobody", "-w", "/tmp",
        "--restart", "no", "busybox", size=(33, 101),
    )  # fmt: skip
    assert body["AttachStdin"] and body["AttachStdout"] and body["AttachStderr"]
    assert body["OpenStdin"] and body["StdinOnce"] and body["Tty"]
    assert body["Cmd"] is None and body["Entrypoint"] == [""]
    assert body["User"] == "nobody" and body["WorkingDir"] == "/tmp"
    assert "ExposedPorts" not in body
    host = body["HostConfig"]
    assert host["ConsoleSize"] == [33, 101]
    assert host["AutoRemove"] is True and host["Init"] is True and "PidsLimit" not in host
    assert host["Privileged"] is True
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["MKNOD"]
    assert host["NetworkMode"] == "none" and host["Binds"] is None
    assert list(body["NetworkingConfig"]["EndpointsConfig"]) == ["none"]
    # without -t the terminal size is not sent
    assert run_body("busybox", size=(33, 101))["HostConfig"]["ConsoleSize"] == [0, 0]


def test_detached_interactive_does_not_attach_stdin() -> None:
    body = run_body("-d", "-i", "busybox", "cat")
    assert body["OpenStdin"] is True
    assert not body["AttachStdin"] and not body["StdinOnce"] and not body["AttachStdout"]


def test_env_from_environment_and_relative_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("NOT_SET", raising=False)
    monkeypatch.chdir("/tmp")
    body = run_body("-e", "FROM_HOST", "-e", "NOT_SET", "-v", "./d:/d:ro", "busybox")
    assert body["Env"] == ["FROM_HOST=yes", "NOT_SET"]
    assert body["HostConfig"]["Binds"] == ["/tmp/d:/d:ro"]


def test_exec_body() -> None:
    body = exec_body(["sh"], True, True, (10, 20), ["A=1"], "root", "/w", False)
    assert body == {
        "User": "root",
        "Privileged": False,
        "Tty": True,
        "ConsoleSize": [10, 20],
        "AttachStdin": True,
        "AttachStderr": True,
        "AttachStdout": True,
        "Detach": False,
        "DetachKeys": "",
        "Env": ["A=1"],
        "WorkingDir": "/w",
        "Cmd": ["sh"],
    }


# -- option parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64m", 64 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("2kb", 2048)],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert cc.parse_memory(text) == expected


def test_bad_options_are_clear_errors() -> None:
    for call in (
        lambda: cc.parse_memory("12x"),
        lambda: cc.parse_cpus("-1"),
        lambda: cc.parse_cpus("many"),
        lambda: cc.parse_restart("sometimes"),
        lambda: cc.parse_restart("always:3"),
        lambda: cc.parse_port("80-90:80"),
    ):
        with pytest.raises(VmctlError) as info:
            call()
        assert info.value.hint
    with pytest.raises(VmctlError, match="--restart and --rm"):
        run_body("--rm", "--restart", "always", "busybox")


def test_parse_cpus_ports_restart() -> None:
    assert cc.parse_cpus("1.5") == 1_500_000_000
    assert cc.parse_restart("on-failure:3") == ("on-failure", 3)
    p = cc.parse_port("127.0.0.1:8080:80/udp")
    assert (p.container_port, p.host_ip, p.host_port) == ("80/udp", "127.0.0.1", "8080")
    p = cc.parse_port("443")
    assert (p.container_port, p.host_ip, p.host_port) == ("443/tcp", "", "")


def test_image_reference_and_start_exit_codes() -> None:
    assert cc.image_reference("busybox") == "busybox:latest"
    assert cc.image_reference("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    assert cc.image_reference("b:1.36") == "b:1.36"
    assert cc.image_reference("b@sha256:00") == "b@sha256:00"
    not_found = 'failed to create task: exec: "x": executable file not found in $PATH'
    assert cc.start_exit_code(not_found) == 127
    assert cc.start_exit_code('exec: "/etc": permission denied') == 126
    assert cc.start_exit_code("cgroup: no space left") == 125


def test_host_addresses() -> None:
    assert cc.socket_from_host("unix:///tmp/e.sock") == Path("/tmp/e.sock")
    assert cc.socket_from_host("/tmp/e.sock") == Path("/tmp/e.sock")
    with pytest.raises(VmctlError, match="unsupported"):
        cc.socket_from_host("tcp://127.0.0.1:2375")


def test_debug_after_a_container_verb_belongs_to_the_command() -> None:
    assert strip_debug(["--debug", "run", "busybox", "x", "--debug"]) == (
        ["run", "busybox", "x", "--debug"],
        True,
    )
    assert strip_debug(["machine", "start", "--debug"]) == (["machine", "start"], True)
    assert strip_debug(["ps"]) == (["ps"], False)
    args = build_parser().parse_args(["exec", "--debug", "c", "ls", "-l"])
    assert args.debug and args.container == "c" and args.command == ["ls", "-l"]
    args = build_parser().parse_args(["run", "-dit", "busybox", "sh", "-c", "echo --rm"])
    assert args.detach and args.interactive and args.tty and not args.rm
    assert args.command == ["sh", "-c", "echo --rm"]


# -- output -----------------------------------------------------------------------------


def test_human_durations_match_docker() -> None:
    words = [human_duration(s) for s in (0.5, 1, 59, 60, 119, 3599, 3600, 7200, 3 * 86400)]
    assert words == [
        "Less than a second",
        "1 second",
        "59 seconds",
        "About a minute",
        "About a minute",
        "59 minutes",
        "About an hour",
        "2 hours",
        "3 days",
    ]


SUMMARY = {
    "Id": "0123456789ab" + "c" * 52,
    "Names": ["/web"],
    "Image": "busybox",
    "Command": "sh -c 'while true; do sleep 1; done'",
    "Created": 1_700_000_000,
    "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
    "Labels": {"b": "2", "a": "1"},
    "State": "running",
    "Status": "Up 5 seconds",
    "NetworkSettings": {"Networks": {"bridge": {}}},
    "Mounts": [{"Type": "volume", "Name": "averyveryverylongvolumename"}],
}


def test_ps_row_is_docker_json_format() -> None:
    row = cc.ps_row(SUMMARY, 1_700_000_065)
    assert sorted(row) == [
        "Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes", "Mounts", "Names",
        "Networks", "Ports", "RunningFor", "Size", "State", "Status",
    ]  # fmt: skip
    assert row["ID"] == "0123456789ab"
    assert row["Command"] == '"sh -c \'while true; …"'
    assert row["RunningFor"] == "About a minute ago"
    assert row["Ports"] == "0.0.0.0:8080->80/tcp"
    assert row["Labels"] == "a=1,b=2"
    assert row["Names"] == "web" and row["Networks"] == "bridge"
    assert row["LocalVolumes"] == "1" and row["Mounts"] == "averyveryveryl…"
    assert row["CreatedAt"].startswith("2023-11-1")
    full = cc.ps_row(SUMMARY, 1_700_000_065, truncate=False)
    assert full["ID"] == SUMMARY["Id"] and full["Command"] == json.dumps(SUMMARY["Command"])


def test_ps_table_layout() -> None:
    table = cc.ps_table([cc.ps_row(SUMMARY, 1_700_000_065)]).splitlines()
    # docker's tabwriter: at least 10 wide, 3 spaces of padding
    assert table[0].startswith("CONTAINER ID   IMAGE     COMMAND                  CREATED  ")
    # every column starts where its title does
    for title in ("IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"):
        column = table[0].index(title)
        assert table[1][column - 1] == " " and table[1][column] != " ", title
    assert table[1].endswith("web")
    empty = "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES\n"
    assert cc.ps_table([]) == empty


# -- framing ----------------------------------------------------------------------------


def test_demuxer_reassembles_frames_split_anywhere() -> None:
    stream = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"x" * 70000)
    for step in (1, 3, 7, 8, 9, 4096, len(stream)):
        demuxer = FrameDemuxer()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), step):
            got += demuxer.feed(stream[i : i + step])
        assert got == [(1, b"out\n"), (2, b"err\n"), (1, b""), (1, b"x" * 70000)], step
        assert demuxer.pending == 0


def test_demuxer_keeps_a_partial_frame_and_rejects_garbage() -> None:
    demuxer = FrameDemuxer()
    assert demuxer.feed(frame(1, b"hello")[:10]) == []
    assert demuxer.pending == 10
    with pytest.raises(VmctlError, match="corrupt"):
        FrameDemuxer().feed(b"hello world, not framed")


def test_demultiplexed_routes_streams_to_fds() -> None:
    chunks = iter([frame(1, b"a") + frame(2, b"b"), frame(3, b"c") + frame(0, b"d")])
    assert list(cc.demultiplexed(chunks, tty=False)) == [(1, b"a"), (2, b"b"), (2, b"c"), (1, b"d")]
    assert list(cc.demultiplexed(iter([b"\x01raw"]), tty=True)) == [(1, b"\x01raw")]


# -- HTTP -------------------------------------------------------------------------------


def exchange_with(answer: bytes) -> HttpExchange:
    ours, theirs = socket.socketpair()
    theirs.sendall(answer)
    theirs.close()
    return HttpExchange(ours)


def test_chunked_body_with_extensions_and_trailers() -> None:
    ex = exchange_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    status, headers = ex.read_head()
    assert status == 200
    assert ex.read_body(status, headers) == b"hello, world"


def test_sized_and_close_delimited_bodies() -> None:
    ex = exchange_with(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA")
    status, headers = ex.read_head()
    assert ex.read_body(status, headers) == b"abc"
    ex = exchange_with(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    status, headers = ex.read_head()
    assert ex.read_body(status, headers) == b"until the end"
    ex = exchange_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    status, headers = ex.read_head()
    with pytest.raises(VmctlError, match="ended early"):
        ex.read_body(status, headers)


Handler = Callable[[socket.socket, bytes], None]


class FakeEngine:
    """A unix socket server answering each connection with the next scripted handler."""

    def __init__(self, path: Path, handlers: list[Handler], api_version: str = "1.50") -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.handlers = [self.ping(api_version), *handlers]
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @staticmethod
    def ping(version: str) -> Handler:
        def handler(conn: socket.socket, _: bytes) -> None:
            conn.sendall(
                f"HTTP/1.1 200 OK\r\nApi-Version: {version}\r\nContent-Length: 2\r\n\r\nOK".encode()
            )

        return handler

    def serve(self) -> None:
        for handler in self.handlers:
            conn, _ = self.server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        while len(rest) < int(line.split(b":")[1]):
                            rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest)
                handler(conn, rest)

    def close(self) -> None:
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., FakeEngine]]:
    made: list[FakeEngine] = []

    def make(handlers: list[Handler], api_version: str = "1.50") -> FakeEngine:
        engine = FakeEngine(tmp_path / f"e{len(made)}.sock", handlers, api_version)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def answer(status: str, body: bytes = b"", extra: str = "") -> Handler:
    def handler(conn: socket.socket, _: bytes) -> None:
        head = f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)

    return handler


def test_version_is_negotiated_down_and_errors_carry_the_engines_message(
    fake: Callable[..., FakeEngine],
) -> None:
    engine = fake(
        [
            answer("201 Created", b'{"Id":"abc","Warnings":[]}'),
            answer("404 Not Found", b'{"message":"No such image: nothere:latest"}'),
        ],
        api_version="1.41",
    )
    client = EngineClient(engine.path)
    assert client.create_container({"Image": "busybox"}, name="web")["Id"] == "abc"
    with pytest.raises(EngineError) as info:
        client.create_container({"Image": "nothere"})
    assert info.value.status == 404
    assert info.value.message == "No such image: nothere:latest"
    first = engine.requests[1].decode()
    assert first.startswith("POST /v1.41/containers/create?name=web HTTP/1.1\r\n")
    assert "Content-Type: application/json" in first
    assert json.loads(first.partition("\r\n\r\n")[2]) == {"Image": "busybox"}
    assert engine.requests[2].startswith(b"POST /v1.41/containers/create HTTP/1.1")


def test_attach_hijacks_and_wait_blocks_until_the_body(fake: Callable[..., FakeEngine]) -> None:
    released = threading.Event()

    def attach(conn: socket.socket, _: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            b"Content-Type: application/vnd.docker.multiplexed-stream\r\n\r\n" + frame(1, b"hi\n")
        )
        assert conn.recv(100) == b"input"
        assert conn.recv(100) == b""  # our half-close
        conn.sendall(frame(2, b"bye\n"))

    def wait(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        released.wait(5)
        body = b'{"StatusCode":3,"Error":null}'
        conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    engine = fake([attach, wait])
    client = EngineClient(engine.path)
    stream = client.attach_container("web", stdin=True)
    stream.sendall(b"input")
    stream.close_write()
    got = b""
    while data := stream.recv():
        got += data
    assert FrameDemuxer().feed(got) == [(1, b"hi\n"), (2, b"bye\n")]
    waiter = client.wait_container("web", "next-exit")  # returns with the head only
    released.set()
    result = waiter.result()
    assert (result.status_code, result.error) == (3, "")
    attach_request = engine.requests[1].decode()
    assert attach_request.startswith(
        "POST /v1.50/containers/web/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1"
    )
    assert "Connection: Upgrade\r\n" in attach_request and "Upgrade: tcp\r\n" in attach_request
    assert engine.requests[2].startswith(b"POST /v1.50/containers/web/wait?condition=next-exit ")


def test_unreachable_engine_is_one_clear_error(tmp_path: Path) -> None:
    client = EngineClient(tmp_path / "absent.sock", connect_hint="start it")
    with pytest.raises(VmctlError) as info:
        client.list_containers()
    assert "the engine is not running at" in info.value.message
    assert info.value.hint == "start it"


def test_cli_prints_error_and_hint_for_a_missing_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmctl.cli import main

    code = main(["run", "--host", f"unix://{tmp_path}/absent.sock", "busybox", "true"])
    err = capsys.readouterr().err
    assert code == 125
    assert err.startswith("error: the engine is not running at ")
    assert "\nhint: " in err and "Traceback" not in err
