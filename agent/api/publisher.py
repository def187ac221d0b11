"""The private endpoint through which vmctl's host agent publishes ports on the host.

``GET /_vmctl/publisher`` is a long-lived stream of JSON lines, one request each:
``{"id", "op": "sync", "containers": {id: [port, ...]}}`` first (every port published now;
the host drops forwards beyond those), then ``{"id", "op": "publish", "container", "ports"}``
and ``{"id", "op": "withdraw", "container"}`` as containers start and stop. A port is
``{"proto", "host_ip", "host_port"}``. The host answers each request with
``POST /_vmctl/publisher/{id}`` and ``{"error": "..."}`` ("" when done); a container's start
waits for the answer to its "publish". Only one publisher is connected at a time.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

from agent import engine_handle
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.errors import AgentError, BadRequest, NotFound

if TYPE_CHECKING:
    from agent.network.ports import PortPublisher

POLL = 0.5  # seconds between checks that the host agent is still there


def _publisher() -> PortPublisher:
    publisher: PortPublisher | None = engine_handle.current().containers.ports
    if publisher is None:
        raise AgentError(501, "this engine has no bridge network: no port can be published")
    return publisher


def stream(request: Request, response: ResponseWriter) -> None:
    publisher = _publisher()
    link = publisher.connect_host()
    try:
        out = response.start_stream(200)
        while not link.closed.is_set():
            try:
                message = link.outbox.get(timeout=POLL)
            except queue.Empty:
                if response.peer_closed():
                    break
                continue
            out.write_json(message)
    except OSError:
        pass  # the host agent went away; it reconnects and is sent a sync
    finally:
        publisher.disconnect_host(link)


def answer(request: Request, response: ResponseWriter) -> None:
    try:
        request_id = int(request.params["id"])
    except ValueError:
        raise BadRequest(f"invalid request id: {request.params['id']!r}") from None
    body = request.json_object()
    error = body.get("error") or ""
    if not isinstance(error, str):
        raise BadRequest('"error" must be a string')
    link = _publisher().host
    if link is None or not link.answer(request_id, error):
        raise NotFound(f"no publish request {request_id} is waiting")
    response.send(204)
