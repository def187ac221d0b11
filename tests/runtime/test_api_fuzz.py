"""Bad input against a real agent: requests generated from the Engine API spec.

For every operation of ../shared/specs/engine-api-v1.50.yaml that the agent implements
(its router knows the path and method), schemathesis generates requests, valid and
not: wrong types, unknown fields, odd strings, missing parameters. Whatever they are, the
agent must answer (no hung connection) with a status below 500, an error as Docker's
`{"message": …}` JSON, and stay healthy for the next client. Operations that block by
design (attach, wait, events, followed logs, streamed stats, exec start) are left out:
their own tests cover them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.routes import build_router
from agent.errors import AgentError
from tests.runtime.conftest import NativeAgent
from vmctl.errors import VmctlError

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")


@schemathesis.serializer("application/x-tar")
def _tar_body(ctx: object, value: object) -> bytes:
    """Tar bodies (docker cp, image load) go out as generated: what is not a tar is a 400."""
    return value if isinstance(value, bytes) else str(value).encode()


# The spec is the team's shared reference beside the checkout (not part of the project).
_SPEC_NAME = "shared/specs/engine-api-v1.50.yaml"
SPEC = next(
    (
        Path(p)
        for p in (
            os.environ.get("VMCTL_ENGINE_SPEC", ""),
            Path(__file__).resolve().parents[3] / _SPEC_NAME,
            Path("/work") / _SPEC_NAME,
        )
        if p and Path(p).is_file()
    ),
    Path(__file__).resolve().parents[3] / _SPEC_NAME,
)
EXAMPLES = 12  # generated requests per operation
TIMEOUT = 30.0  # seconds an answer may take before the connection counts as hung
FUZZ_TARGET = "fuzz-target"
BLOCKING = {
    ("POST", "/containers/{id}/attach"),
    ("GET", "/containers/{id}/attach/ws"),
    ("POST", "/containers/{id}/wait"),
    ("GET", "/events"),
    ("GET", "/containers/{id}/logs"),
    ("GET", "/containers/{id}/stats"),
    ("POST", "/exec/{id}/start"),
}
# These dial a registry (or a build context's URL); the test agent has no network, so an
# upstream that cannot be reached is the one 5xx they may answer: 502, with a message.
DIAL_OUT = {
    ("POST", "/auth"),
    ("POST", "/images/create"),
    ("POST", "/images/{name}/push"),
    ("POST", "/build"),
}


class Relay:
    """127.0.0.1:<port> → the agent's unix socket, so an HTTP client can reach it."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def relay(agent: NativeAgent) -> Iterator[Relay]:
    relay = Relay(agent.socket)
    yield relay
    relay.close()


def implemented_operations() -> list[object]:
    if not SPEC.exists():
        pytest.skip(
            f"the Engine API spec is not beside this checkout ({SPEC}); set VMCTL_ENGINE_SPEC"
        )
    schema = schemathesis.openapi.from_path(str(SPEC))
    router = build_router()
    chosen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        method, path = operation.method.upper(), operation.path
        if (method, path) in BLOCKING:
            continue
        concrete = path.replace("{", "").replace("}", "")  # any value matches a {param}
        try:
            router.resolve(method, concrete)
        except AgentError:  # no such path, or not this method
            continue
        chosen.append(operation)
    return chosen


def aim_at_real_objects(case: object, agent: NativeAgent) -> None:
    """Half the time, a path's {id} or {name} names a real running container (or an exec
    in it) instead of a random string, so the handlers behind the 404 are reached."""
    query = getattr(case, "query", None)
    if isinstance(query, dict) and str(query.get("t", "")).lstrip("-").isdigit():
        query["t"] = 1  # a real stop waits as long as asked: keep it short
    params = getattr(case, "path_parameters", None)
    if not params or secrets.randbelow(2):
        return
    client = agent.client
    try:
        state = client.inspect_container(FUZZ_TARGET)["State"]
        if not state["Running"]:
            client.remove_container(FUZZ_TARGET, force=True)
            raise VmctlError("gone")
    except VmctlError:
        client.create_container(
            {"Image": "busybox", "Cmd": ["sleep", "600"], "HostConfig": {"NetworkMode": "none"}},
            name=FUZZ_TARGET,
        )
        client.start_container(FUZZ_TARGET)
    target = client.inspect_container(FUZZ_TARGET)["Id"]
    path = str(getattr(case, "path", ""))
    for key in params:
        if path.startswith("/exec/"):
            params[key] = client.exec_create(target, {"Cmd": ["true"]})
        else:
            params[key] = target


def _has_message(response: object) -> bool:
    try:
        body = response.json()  # type: ignore[attr-defined]
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get("message"))


def test_generated_requests_never_get_a_5xx(agent: NativeAgent, relay: Relay) -> None:
    operations = implemented_operations()
    assert len(operations) >= 15, [f"{o.method} {o.path}" for o in operations]  # type: ignore[attr-defined]
    failures: list[str] = []
    base_url = f"http://127.0.0.1:{relay.port}/v1.50"

    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())  # type: ignore[attr-defined]
        def check(case: object) -> None:
            aim_at_real_objects(case, agent)
            response = case.call(base_url=base_url, timeout=TIMEOUT)  # type: ignore[attr-defined]
            where = f"{case.method} {case.formatted_path}"  # type: ignore[attr-defined]
            upstream = (case.method.upper(), case.path) in DIAL_OUT  # type: ignore[attr-defined]
            if response.status_code == 502 and upstream and _has_message(response):
                return
            if response.status_code >= 500:
                failures.append(f"{where} -> {response.status_code}: {response.text[:300]}")
            elif response.status_code >= 400 and response.request.method != "HEAD":
                body = response.json() if response.content else {}
                if not isinstance(body, dict) or not body.get("message"):
                    failures.append(f"{where} -> {response.status_code} without a message")

        check()
    assert not failures, "\n".join(sorted(set(failures))[:40])
    # still healthy: a real container runs afterwards
    result = agent.vmctl("run", "--rm", "busybox", "echo", "still here")
    assert result.returncode == 0 and result.stdout == "still here\n", result.stderr
