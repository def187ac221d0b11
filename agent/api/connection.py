"""One client connection: read requests, dispatch them, keep the connection alive or not."""

from __future__ import annotations

import socket
import time

from agent.api.buffered_socket import BufferedSocket
from agent.api.limits import Limits
from agent.api.request import ProtocolError, Request, read_request
from agent.api.response import ResponseWriter, send_error_and_close
from agent.api.router import MethodNotAllowed, Router
from agent.api.versions import check_client_version
from agent.errors import AgentError
from agent.logsetup import debug_enabled, get_logger

log = get_logger(__name__)

# what a client sees for an unexpected exception: enough to report, never a traceback
MAX_ERROR_TEXT = 200


def serve_connection(sock: socket.socket, router: Router, limits: Limits) -> bool:
    """Serve requests on ``sock`` until either side ends the connection.

    Returns True when a handler hijacked the socket (it now owns it), else closes the socket
    and returns False.
    """
    conn = BufferedSocket(sock)
    hijacked = False
    try:
        while True:
            try:
                request = read_request(conn, limits)
            except ProtocolError as error:
                log.info("refused a request: %d %s", error.status, error.message)
                send_error_and_close(conn, error)
                return False
            if request is None:
                return False
            if debug_enabled():
                log.debug("%s %s headers: %s", request.method, request.target, _loggable(request))
            response = ResponseWriter(conn, request)
            handle_request(router, request, response)
            if response.hijacked:
                hijacked = True
                return True
            if not (response.keep_alive and _body_consumed(request, response)):
                return False
    except (EOFError, OSError) as error:
        # the client went away (broken pipe, reset, closed half-way): nothing to answer
        log.debug("connection ended: %s", error)
        return False
    finally:
        if not hijacked:
            conn.close()


# credentials travel in these (base64 JSON); never write them to the log
_SECRET_HEADERS = frozenset(("authorization", "x-registry-auth", "x-registry-config"))


def _loggable(request: Request) -> list[tuple[str, str]]:
    return [
        (name, "<redacted>" if name.lower() in _SECRET_HEADERS else value)
        for name, value in request.headers.items()
    ]


def handle_request(router: Router, request: Request, response: ResponseWriter) -> None:
    """Route and run one request, turning every failure into an Engine API error response."""
    started = time.monotonic()
    try:
        match = router.resolve(request.method, request.path)
        request.params = match.params
        if match.version is not None:
            check_client_version(match.version)
            request.api_version = match.version
        match.route.handler(request, response)
        response.finish()
    except AgentError as error:
        if isinstance(error, MethodNotAllowed) and not response.started:
            response.set_header("Allow", ", ".join(error.allowed))
        _fail(request, response, error)
    except (EOFError, OSError):
        response.abandon()
        raise
    except Exception as error:
        log.exception("handler for %s %s failed", request.method, request.path)
        text = f"{type(error).__name__}: {error}"
        if len(text) > MAX_ERROR_TEXT:
            text = text[: MAX_ERROR_TEXT - 3] + "..."
        _fail(request, response, AgentError(500, f"internal server error: {text}"))
    finally:
        # the path only: query strings can hold secrets (build args), the debug log has them
        log.info(
            "%s %s -> %d (%.1f ms)",
            request.method,
            request.path,
            response.status,
            (time.monotonic() - started) * 1000,
        )


def _fail(request: Request, response: ResponseWriter, error: AgentError) -> None:
    if isinstance(error, ProtocolError):
        response.abandon()  # e.g. 413 in the middle of a body: the rest cannot be skipped
    if response.started:
        # too late for a status: cut the body short so the client sees an incomplete reply
        log.warning(
            "%s %s failed after the response started: %s",
            request.method,
            request.path,
            error.message,
        )
        response.abandon()
        return
    response.send_error(error)


def _body_consumed(request: Request, response: ResponseWriter) -> bool:
    """Skip a body the handler left unread, so the next request starts at its first byte.

    A client still waiting for ``100 Continue`` may or may not send the body: close instead.
    """
    if request.expect_continue and not request.body.started:
        return False
    try:
        return request.body.drain(request.body.limits.max_drain)
    except ProtocolError:
        return False
