"""A typed Engine API client over a unix socket, for vmctl's own container verbs.

Every call is one HTTP/1.1 exchange on a fresh connection (`Connection: close`), so a
streamed body (logs, wait) or a hijacked stream (attach, exec) owns its socket. The API
version is negotiated once from `/_ping`, as the docker CLI does: the client's own version,
or the engine's if that is lower.

Request bodies follow what docker CLI 28.2.2 sends (see `create_body`), so the engine sees
the same shapes from vmctl as from docker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from vmctl import client
from vmctl.errors import VmctlError

API_VERSION = "1.50"
MIN_API_VERSION = "1.24"
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 120.0  # an answer that is not a stream; stop/kill can take their grace time
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

# Stream types of Docker's 8-byte frame header: stdin is written back on stdout.
STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3


class EngineError(VmctlError):
    """The engine answered with an error status; ``message`` is its own words."""

    def __init__(self, status: int, message: str, hint: str = "", exit_code: int = 1) -> None:
        super().__init__(message, hint=hint, exit_code=exit_code)
        self.status = status


# -- HTTP over one socket ---------------------------------------------------------------


class HttpExchange:
    """One request and its response on a socket this object owns."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: vmctl"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self._buf += data
        return bool(data)

    def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_HEAD:
                raise VmctlError("the engine sent an oversized response head")
            if not self._fill():
                raise VmctlError(
                    "the engine closed the connection without an answer", hint=client.AGENT_HINT
                )
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        response = client.parse_response(head + b"\r\n\r\n")
        return response.status, response.headers

    def body(self, status: int, headers: dict[str, str]) -> Iterator[bytes]:
        """The body's bytes as they arrive (chunked, sized, or up to the close)."""
        if status in (204, 304) or 100 <= status < 200:
            return
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._line():  # trailers, up to the blank line
                        pass
                    return
                yield from self._exactly(size)
                self._line()
        elif "content-length" in headers:
            yield from self._exactly(int(headers["content-length"]))
        else:
            if self._buf:
                yield self.take_buffered()
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                yield data

    def read_body(self, status: int, headers: dict[str, str]) -> bytes:
        out = bytearray()
        for piece in self.body(status, headers):
            out += piece
            if len(out) > MAX_BODY:
                raise VmctlError(f"the engine's answer is larger than {MAX_BODY} bytes")
        return bytes(out)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise VmctlError("the engine's answer ended in the middle of a chunk")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            if not self._buf and not self._fill():
                raise VmctlError("the engine's answer ended early")
            piece, self._buf = self._buf[:size], self._buf[size:]
            size -= len(piece)
            yield piece

    def take_buffered(self) -> bytes:
        data, self._buf = self._buf, b""
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Hijacked:
    """A raw two-way stream after `101 UPGRADED` (attach, exec start)."""

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._buffered = buffered

    def recv(self, size: int = 65536) -> bytes:
        if self._buffered:
            data, self._buffered = self._buffered[:size], self._buffered[size:]
            return data
        try:
            return self.sock.recv(size)
        except ConnectionResetError:
            return b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        """Our stdin ended: the container's stdin closes, its output keeps coming."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class WaitResult:
    status_code: int
    error: str


class Waiter:
    """A `POST /containers/{id}/wait` whose head has arrived; the body comes at the exit."""

    def __init__(self, exchange: HttpExchange, status: int, headers: dict[str, str]) -> None:
        self._exchange = exchange
        self._status = status
        self._headers = headers

    def result(self) -> WaitResult:
        try:
            body = self._exchange.read_body(self._status, self._headers)
        finally:
            self._exchange.close()
        try:
            data = json.loads(body)
            error = (data.get("Error") or {}).get("Message") or ""
            return WaitResult(int(data["StatusCode"]), str(error))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise VmctlError(
                f"the engine's wait answer is not understood: {body[:200]!r}",
                hint=client.AGENT_HINT,
            ) from None

    def close(self) -> None:
        self._exchange.close()


# -- stream framing ---------------------------------------------------------------------


def frame(stream: int, payload: bytes) -> bytes:
    """Docker's 8-byte header (type, three zero bytes, big-endian size) and the payload."""
    return struct.pack(">BxxxI", stream, len(payload)) + payload


class FrameDemuxer:
    """Splits a multiplexed stream (attach/exec/logs without a TTY) into (stream, payload)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 8:
            stream, size = struct.unpack(">BxxxI", self._buf[:8])
            if stream > SYSTEMERR or any(self._buf[1:4]):
                raise VmctlError(
                    f"the engine's output stream is corrupt (header {bytes(self._buf[:8])!r})",
                    hint="the container may have no TTY while the stream is raw; "
                    + client.AGENT_HINT,
                )
            if len(self._buf) < 8 + size:
                break
            out.append((stream, bytes(self._buf[8 : 8 + size])))
            del self._buf[: 8 + size]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still held (non-zero at EOF means truncation)."""
        return len(self._buf)


# -- the create body --------------------------------------------------------------------


@dataclass
class PortBinding:
    container_port: str  # "80/tcp"
    host_ip: str = ""
    host_port: str = ""


@dataclass
class ContainerOptions:
    """What `vmctl run` was asked for, already parsed into API units."""

    image: str
    command: list[str] | None = None
    name: str = ""
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    console_size: tuple[int, int] = (0, 0)  # rows, columns (with a TTY)
    auto_remove: bool = False
    env: list[str] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    ports: list[PortBinding] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    entrypoint: str | None = None  # "" resets the image's entrypoint
    memory: int = 0  # bytes
    nano_cpus: int = 0
    pids_limit: int | None = None
    network: str = "default"
    restart_name: str = "no"
    restart_retries: int = 0
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    init: bool | None = None


def _endpoint() -> dict[str, Any]:
    return {
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


def create_body(opts: ContainerOptions) -> dict[str, Any]:
    """The `POST /containers/create` body, field for field as docker CLI 28.2.2 builds it."""
    attach = not opts.detach
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in opts.ports:
        exposed[port.container_port] = {}
        bindings.setdefault(port.container_port, []).append(
            {"HostIp": port.host_ip, "HostPort": port.host_port}
        )
    if opts.entrypoint is None:
        entrypoint: list[str] | None = None
    else:
        entrypoint = [opts.entrypoint]
    config: dict[str, Any] = {
        "Hostname": "",
        "Domainname": "",
        "User": opts.user,
        "AttachStdin": attach and opts.interactive,
        "AttachStdout": attach,
        "AttachStderr": attach,
    }
    if exposed:
        config["ExposedPorts"] = exposed
    config |= {
        "Tty": opts.tty,
        "OpenStdin": opts.interactive,
        "StdinOnce": attach and opts.interactive,
        "Env": list(opts.env),
        "Cmd": list(opts.command) if opts.command else None,
        "Image": opts.image,
        "Volumes": {},
        "WorkingDir": opts.workdir,
        "Entrypoint": entrypoint,
        "OnBuild": None,
        "Labels": {},
    }
    host: dict[str, Any] = {
        "Binds": list(opts.binds) or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": opts.network,
        "PortBindings": bindings,
        "RestartPolicy": {"Name": opts.restart_name, "MaximumRetryCount": opts.restart_retries},
        "AutoRemove": opts.auto_remove,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": list(opts.console_size) if opts.tty else [0, 0],
        "CapAdd": list(opts.cap_add) or None,
        "CapDrop": list(opts.cap_drop) or None,
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
        "Privileged": opts.privileged,
        "PublishAllPorts": False,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
    }
    if opts.init is not None:
        host["Init"] = opts.init
    host |= {
        "Isolation": "",
        "CpuShares": 0,
        "Memory": opts.memory,
        "NanoCpus": opts.nano_cpus,
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
    }
    if opts.pids_limit is not None:
        host["PidsLimit"] = opts.pids_limit
    host |= {
        "Ulimits": [],
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    }
    return {
        **config,
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": {opts.network: _endpoint()}},
    }


def exec_body(
    command: list[str],
    interactive: bool,
    tty: bool,
    console_size: tuple[int, int],
    env: list[str],
    user: str,
    workdir: str,
    detach: bool,
) -> dict[str, Any]:
    """The `POST /containers/{id}/exec` body as docker CLI 28.2.2 builds it."""
    return {
        "User": user,
        "Privileged": False,
        "Tty": tty,
        "ConsoleSize": list(console_size) if tty else None,
        "AttachStdin": interactive and not detach,
        "AttachStderr": not detach,
        "AttachStdout": not detach,
        "Detach": detach,
        "DetachKeys": "",
        "Env": list(env) or None,
        "WorkingDir": workdir,
        "Cmd": list(command),
    }


# -- the client -------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _ref(container: str) -> str:
    return quote(container, safe="")


class EngineClient:
    """The Engine API of one engine socket."""

    def __init__(self, socket_path: Path, connect_hint: str = "") -> None:
        self.socket_path = socket_path
        self.connect_hint = connect_hint
        self._version: str | None = None

    # -- plumbing -------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.socket_path))
        except OSError as e:
            sock.close()
            absent = isinstance(e, (FileNotFoundError, ConnectionRefusedError))
            what = "the engine is not running" if absent else "cannot connect to the engine"
            raise VmctlError(
                f"{what} at {self.socket_path} ({e.strerror or e})", hint=self.connect_hint
            ) from None
        sock.settimeout(timeout)
        return sock

    @property
    def api_version(self) -> str:
        if self._version is None:
            self._version = self.ping()
        return self._version

    def ping(self) -> str:
        """Check the engine answers; the API version to speak with it."""
        exchange = HttpExchange(self._connect(REQUEST_TIMEOUT))
        try:
            exchange.send("GET", "/_ping", None, {"Connection": "close"})
            status, headers = exchange.read_head()
            body = exchange.read_body(status, headers)
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()
        if status not in (200, 500):
            raise EngineError(status, f"the engine answered /_ping with {status}: {body[:200]!r}")
        server = headers.get("api-version", "") or MIN_API_VERSION
        return min(API_VERSION, server, key=_version_key)

    def _broken(self, error: OSError) -> VmctlError:
        return VmctlError(
            f"the connection to the engine at {self.socket_path} broke: {error.strerror or error}",
            hint=client.AGENT_HINT,
        )

    def _target(self, path: str, query: dict[str, Any] | None) -> str:
        pairs = {k: v for k, v in (query or {}).items() if v is not None}
        for key, value in pairs.items():
            if isinstance(value, bool):
                pairs[key] = "1" if value else "0"
        suffix = "?" + urlencode(pairs, doseq=True) if pairs else ""  # lists: names=a&names=b
        return f"/v{self.api_version}{path}{suffix}"

    def _open(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = REQUEST_TIMEOUT,
        upgrade: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[HttpExchange, int, dict[str, str]]:
        """Send a request; the exchange with its response head read. Error statuses raise."""
        target = self._target(path, query)
        headers = {"Connection": "Upgrade", "Upgrade": "tcp"} if upgrade else {}
        headers.update(extra_headers or {})
        headers.setdefault("Connection", "close")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        exchange = HttpExchange(self._connect(timeout))
        try:
            exchange.send(method, target, data, headers)
            status, response_headers = exchange.read_head()
            if status >= 400:
                raise EngineError(status, _error_message(exchange, status, response_headers))
        except OSError as e:
            exchange.close()
            raise self._broken(e) from None
        except BaseException:
            exchange.close()
            raise
        return exchange, status, response_headers

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = REQUEST_TIMEOUT,
    ) -> tuple[int, bytes]:
        exchange, status, headers = self._open(method, path, query, body, timeout)
        try:
            return status, exchange.read_body(status, headers)
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, data = self._call(method, path, **kwargs)
        try:
            return json.loads(data)
        except ValueError:
            raise VmctlError(
                f"the engine's answer to {method} {path} is not JSON: {data[:200]!r}",
                hint=client.AGENT_HINT,
            ) from None

    # -- containers -----------------------------------------------------------------

    def create_container(self, body: dict[str, Any], name: str = "") -> dict[str, Any]:
        """`{"Id": …, "Warnings": […]}` of the new container."""
        result = self._json("POST", "/containers/create", query={"name": name or None}, body=body)
        if not isinstance(result, dict) or not isinstance(result.get("Id"), str):
            raise VmctlError(f"the engine's create answer has no Id: {result!r}")
        return result

    def list_containers(self, all: bool = False) -> list[dict[str, Any]]:
        result = self._json("GET", "/containers/json", query={"all": all or None})
        return list(result) if isinstance(result, list) else []

    def inspect_container(self, container: str) -> dict[str, Any]:
        result = self._json("GET", f"/containers/{_ref(container)}/json")
        if not isinstance(result, dict):
            raise VmctlError(f"the engine's inspect answer is not an object: {result!r}")
        return result

    def start_container(self, container: str) -> None:
        self._call("POST", f"/containers/{_ref(container)}/start")

    def stop_container(
        self, container: str, timeout: int | None = None, signal: str | None = None
    ) -> None:
        self._call(
            "POST",
            f"/containers/{_ref(container)}/stop",
            query={"t": timeout, "signal": signal},
            timeout=None,
        )

    def restart_container(self, container: str, timeout: int | None = None) -> None:
        self._call(
            "POST", f"/containers/{_ref(container)}/restart", query={"t": timeout}, timeout=None
        )

    def kill_container(self, container: str, signal: str | None = None) -> None:
        self._call("POST", f"/containers/{_ref(container)}/kill", query={"signal": signal})

    def remove_container(self, container: str, force: bool = False, volumes: bool = False) -> None:
        self._call(
            "DELETE",
            f"/containers/{_ref(container)}",
            query={"force": force or None, "v": volumes or None},
            timeout=None,
        )

    def resize_container(self, container: str, rows: int, columns: int) -> None:
        self._call("POST", f"/containers/{_ref(container)}/resize", query={"h": rows, "w": columns})

    def wait_container(self, container: str, condition: str = "not-running") -> Waiter:
        """Returns once the engine has taken the wait (its head arrived); `result()` blocks."""
        exchange, status, headers = self._open(
            "POST",
            f"/containers/{_ref(container)}/wait",
            query={"condition": condition},
            timeout=None,
        )
        return Waiter(exchange, status, headers)

    def attach_container(
        self, container: str, stdin: bool, stdout: bool = True, stderr: bool = True
    ) -> Hijacked:
        query = {"stream": True, "stdin": stdin or None, "stdout": stdout, "stderr": stderr}
        return self._hijack(f"/containers/{_ref(container)}/attach", query, None)

    def container_logs(
        self,
        container: str,
        follow: bool = False,
        tail: str = "all",
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """The log stream's raw bytes (multiplexed unless the container has a TTY)."""
        exchange, status, headers = self._open(
            "GET",
            f"/containers/{_ref(container)}/logs",
            query={
                "stdout": True,
                "stderr": True,
                "follow": follow or None,
                "tail": tail,
                "timestamps": timestamps or None,
            },
            timeout=None,
        )
        try:
            yield from exchange.body(status, headers)
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()

    # -- exec -----------------------------------------------------------------------

    def exec_create(self, container: str, body: dict[str, Any]) -> str:
        result = self._json("POST", f"/containers/{_ref(container)}/exec", body=body)
        if not isinstance(result, dict) or not isinstance(result.get("Id"), str):
            raise VmctlError(f"the engine's exec answer has no Id: {result!r}")
        return str(result["Id"])

    def exec_start(
        self, exec_id: str, tty: bool, console_size: tuple[int, int] | None, detach: bool = False
    ) -> Hijacked | None:
        """The exec's stream, or None when detached."""
        body = {"Detach": detach, "Tty": tty, "ConsoleSize": list(console_size or (0, 0))}
        if detach:
            self._call("POST", f"/exec/{_ref(exec_id)}/start", body=body)
            return None
        return self._hijack(f"/exec/{_ref(exec_id)}/start", None, body)

    def exec_resize(self, exec_id: str, rows: int, columns: int) -> None:
        self._call("POST", f"/exec/{_ref(exec_id)}/resize", query={"h": rows, "w": columns})

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        result = self._json("GET", f"/exec/{_ref(exec_id)}/json")
        if not isinstance(result, dict):
            raise VmctlError(f"the engine's exec inspect answer is not an object: {result!r}")
        return result

    # -- volumes and system ---------------------------------------------------------

    def create_volume(
        self,
        name: str = "",
        driver: str = "local",
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = {"Name": name, "Driver": driver, "Labels": labels or {}, "DriverOpts": options or {}}
        return self._object("POST", "/volumes/create", body=body)

    def list_volumes(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        query = {"filters": json.dumps(filters)} if filters else None
        result = self._object("GET", "/volumes", query=query)
        return list(result.get("Volumes") or [])

    def inspect_volume(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/volumes/{_ref(name)}")

    def remove_volume(self, name: str, force: bool = False) -> None:
        self._call("DELETE", f"/volumes/{_ref(name)}", query={"force": force or None})

    def prune_volumes(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        query = {"filters": json.dumps(filters)} if filters else None
        return self._object("POST", "/volumes/prune", query=query, timeout=None)

    # -- networks -------------------------------------------------------------------

    def create_network(self, name: str, **settings: Any) -> dict[str, Any]:
        """POST /networks/create; settings are the body's other fields (Internal, IPAM…)."""
        return self._object("POST", "/networks/create", body={"Name": name, **settings})

    def list_networks(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        query = {"filters": json.dumps(filters)} if filters else None
        result = self._json("GET", "/networks", query=query)
        if not isinstance(result, list):
            raise VmctlError("the engine's network list is not a list")
        return result

    def inspect_network(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/networks/{_ref(name)}")

    def remove_network(self, name: str) -> None:
        self._call("DELETE", f"/networks/{_ref(name)}")

    def prune_networks(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        query = {"filters": json.dumps(filters)} if filters else None
        return self._object("POST", "/networks/prune", query=query)

    def connect_network(
        self, network: str, container: str, endpoint: dict[str, Any] | None = None
    ) -> None:
        body = {"Container": container, "EndpointConfig": endpoint or {}}
        self._call("POST", f"/networks/{_ref(network)}/connect", body=body)

    def disconnect_network(self, network: str, container: str, force: bool = False) -> None:
        body = {"Container": container, "Force": force}
        self._call("POST", f"/networks/{_ref(network)}/disconnect", body=body)

    def info(self) -> dict[str, Any]:
        return self._object("GET", "/info")

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result = self._json(method, path, **kwargs)
        if not isinstance(result, dict):
            raise VmctlError(f"the engine's answer to {method} {path} is not an object")
        return result

    # -- files and processes of a container (cp, top, stats) ---------------------------

    def stat_path(self, container: str, path: str) -> dict[str, Any]:
        """docker's ContainerPathStat (name, size, mode as Go's FileMode, mtime,
        linkTarget) of a path in the container."""
        archive = f"/containers/{_ref(container)}/archive"
        exchange = HttpExchange(self._connect(REQUEST_TIMEOUT))
        try:
            exchange.send(
                "HEAD", self._target(archive, {"path": path}), None, {"Connection": "close"}
            )
            status, headers = exchange.read_head()
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()
        if status >= 400:
            # a HEAD answer has no body: a GET of the same path says what is wrong
            exchange, _, headers = self._open("GET", archive, {"path": path})
            exchange.close()
        return decode_path_stat(headers)

    def get_archive(self, container: str, path: str) -> tuple[dict[str, Any], Iterator[bytes]]:
        """The path's stat and a tar stream of it."""
        exchange, status, headers = self._open(
            "GET", f"/containers/{_ref(container)}/archive", {"path": path}, timeout=None
        )
        stat = decode_path_stat(headers)

        def chunks() -> Iterator[bytes]:
            try:
                yield from exchange.body(status, headers)
            except OSError as e:
                raise self._broken(e) from None
            finally:
                exchange.close()

        return stat, chunks()

    def put_archive(
        self,
        container: str,
        path: str,
        write: Callable[[ChunkedWriter], None],
        copy_uid_gid: bool = False,
    ) -> None:
        """Extract a tar into directory ``path`` of the container; ``write`` produces the
        tar into the (chunked) request body as it goes."""
        query = {"path": path, "noOverwriteDirNonDir": True, "copyUIDGID": copy_uid_gid or None}
        self._upload_tar("PUT", f"/containers/{_ref(container)}/archive", query, write)

    def _upload_tar(
        self,
        method: str,
        path: str,
        query: dict[str, Any],
        write: Callable[[ChunkedWriter], None],
    ) -> bytes:
        """Send a tar that ``write`` produces as a chunked body; the answer's body."""
        exchange, status, response_headers = self._send_tar(method, path, query, write)
        try:
            return exchange.read_body(status, response_headers)
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()

    def _send_tar(
        self,
        method: str,
        path: str,
        query: dict[str, Any],
        write: Callable[[ChunkedWriter], None],
    ) -> tuple[HttpExchange, int, dict[str, str]]:
        """Send a tar that ``write`` produces as a chunked body; the exchange with its
        response head read. Error statuses raise."""
        headers = {
            "Connection": "close",
            "Content-Type": "application/x-tar",
            "Transfer-Encoding": "chunked",
        }
        exchange = HttpExchange(self._connect(None))
        try:
            exchange.send(method, self._target(path, query), None, headers)
            body = ChunkedWriter(exchange.sock)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                write(body)  # the engine may refuse before the end: its answer says why
                body.finish()
            status, response_headers = exchange.read_head()
            if status >= 400:
                raise EngineError(status, _error_message(exchange, status, response_headers))
        except OSError as e:
            exchange.close()
            raise self._broken(e) from None
        except BaseException:
            exchange.close()
            raise
        return exchange, status, response_headers

    def _json_lines(
        self, exchange: HttpExchange, status: int, headers: dict[str, str]
    ) -> Iterator[dict[str, Any]]:
        """A streamed body of JSON messages, one a line, as they come; closes the exchange."""
        pending = b""
        try:
            for chunk in exchange.body(status, headers):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield from json_messages(line)
            if pending.strip():
                yield from json_messages(pending)
        except OSError as e:
            raise self._broken(e) from None
        finally:
            exchange.close()

    def build_image(
        self, query: dict[str, Any], write: Callable[[ChunkedWriter], None]
    ) -> Iterator[dict[str, Any]]:
        """POST /build: send the context tar ``write`` produces; the progress messages as
        they come ({"stream": …}, {"aux": {"ID": …}}); an error message raises."""
        exchange, status, response_headers = self._send_tar("POST", "/build", query, write)
        return self._json_lines(exchange, status, response_headers)

    def top(self, container: str, ps_args: str = "") -> dict[str, Any]:
        query = {"ps_args": ps_args or None}
        result = self._json("GET", f"/containers/{_ref(container)}/top", query=query)
        if not isinstance(result, dict):
            raise VmctlError(f"the engine's top answer is not an object: {result!r}")
        return result

    def container_stats(self, container: str) -> dict[str, Any]:
        """One stats document (with the figures of a second before, for CPU %)."""
        result = self._json("GET", f"/containers/{_ref(container)}/stats", query={"stream": False})
        if not isinstance(result, dict):
            raise VmctlError(f"the engine's stats answer is not an object: {result!r}")
        return result

    # -- images ---------------------------------------------------------------------

    def list_images(
        self, all: bool = False, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        query = {"all": all or None, "filters": json.dumps(filters) if filters else None}
        result = self._json("GET", "/images/json", query=query)
        return list(result) if isinstance(result, list) else []

    def remove_image(self, image: str, force: bool = False) -> list[dict[str, str]]:
        """What the engine untagged and deleted: [{"Untagged": …}, {"Deleted": …}, …]."""
        result = self._json("DELETE", f"/images/{_ref(image)}", query={"force": force or None})
        return list(result) if isinstance(result, list) else []

    def tag_image(self, image: str, repo: str, tag: str = "") -> None:
        self._call("POST", f"/images/{_ref(image)}/tag", query={"repo": repo, "tag": tag or None})

    def commit_container(
        self,
        container: str,
        repo: str = "",
        tag: str = "",
        changes: list[str] | None = None,
        comment: str = "",
        author: str = "",
        pause: bool = True,
    ) -> str:
        """`docker commit`: the new image's id."""
        query = {
            "container": container,
            "repo": repo or None,
            "tag": tag or None,
            "changes": changes or None,
            "comment": comment or None,
            "author": author or None,
            "pause": pause,
        }
        result = self._json("POST", "/commit", query=query)
        if not isinstance(result, dict) or not isinstance(result.get("Id"), str):
            raise VmctlError(f"the engine's commit answer has no Id: {result!r}")
        return str(result["Id"])

    def pull_image(
        self, name: str, tag: str = "", platform: str = "", registry_auth: str = ""
    ) -> Iterator[dict[str, Any]]:
        """`docker pull`: the engine's progress messages as they come; an error raises."""
        query = {"fromImage": name, "tag": tag or None, "platform": platform or None}
        return self._progress("/images/create", query, registry_auth)

    def push_image(
        self, name: str, tag: str = "", registry_auth: str = ""
    ) -> Iterator[dict[str, Any]]:
        """`docker push`: the engine's progress messages as they come; an error raises."""
        return self._progress(f"/images/{_ref(name)}/push", {"tag": tag or None}, registry_auth)

    def _progress(
        self, path: str, query: dict[str, Any], registry_auth: str
    ) -> Iterator[dict[str, Any]]:
        headers = {"X-Registry-Auth": registry_auth} if registry_auth else {}
        exchange, status, response_headers = self._open(
            "POST", path, query=query, timeout=None, extra_headers=headers
        )

        return self._json_lines(exchange, status, response_headers)

    def save_images(self, names: list[str]) -> Iterator[bytes]:
        """The `docker save` tarball of ``names``, as it streams in."""
        exchange, status, headers = self._open(
            "GET", "/images/get", query={"names": names}, timeout=None
        )

        def chunks() -> Iterator[bytes]:
            try:
                yield from exchange.body(status, headers)
            except OSError as e:
                raise self._broken(e) from None
            finally:
                exchange.close()

        return chunks()

    def load_images(self, source: Any, quiet: bool = True) -> list[dict[str, Any]]:
        """Send a `docker save` tarball read from ``source`` (a binary file); the engine's
        JSON messages ({"stream": "Loaded image: …"}). An error message raises."""

        def write(body: ChunkedWriter) -> None:
            while data := source.read(1 << 20):
                body.write(data)

        return json_messages(self._upload_tar("POST", "/images/load", {"quiet": quiet}, write))

    def _hijack(self, path: str, query: dict[str, Any] | None, body: Any) -> Hijacked:
        exchange, status, _ = self._open("POST", path, query, body, timeout=None, upgrade=True)
        if status not in (101, 200):
            exchange.close()
            raise VmctlError(
                f"the engine did not switch {path} to a stream (status {status})",
                hint=client.AGENT_HINT,
            )
        return Hijacked(exchange.sock, exchange.take_buffered())


class ChunkedWriter:
    """A request body sent in HTTP/1.1 chunks as it is written (a tar being made)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> int:
        if data:
            self.sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
        return len(data)

    def finish(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")


def decode_path_stat(headers: dict[str, str]) -> dict[str, Any]:
    """The X-Docker-Container-Path-Stat header (base64 JSON) of an archive answer."""
    raw = headers.get("x-docker-container-path-stat", "")
    try:
        value = json.loads(base64.b64decode(raw))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise VmctlError(
            "the engine's archive answer has no usable path stat header", hint=client.AGENT_HINT
        )
    return value


def json_messages(body: bytes) -> list[dict[str, Any]]:
    """The messages of a JSON progress stream (load, import, pull); its error raises."""
    messages: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    text = body.decode(errors="replace")
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        if position >= len(text):
            return messages
        try:
            message, position = decoder.raw_decode(text, position)
        except ValueError:
            raise VmctlError(
                f"the engine's progress stream is not JSON: {text[position : position + 200]!r}",
                hint=client.AGENT_HINT,
            ) from None
        if isinstance(message, dict):
            error = message.get("errorDetail") or {}
            if message.get("error") or (isinstance(error, dict) and error.get("message")):
                detail = error.get("message") if isinstance(error, dict) else None
                raise EngineError(200, str(detail or message.get("error")))
            messages.append(message)


def _error_message(exchange: HttpExchange, status: int, headers: dict[str, str]) -> str:
    try:
        body = exchange.read_body(status, headers)
    except (OSError, VmctlError):
        body = b""
    finally:
        exchange.close()
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    except ValueError:
        pass
    text = body.decode(errors="replace").strip()
    return text or f"the engine answered with status {status}"
