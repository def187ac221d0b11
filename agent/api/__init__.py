"""The Engine API: a small threaded HTTP/1.1 server over a unix socket, a router and handlers.

Stdlib only, and no asyncio/http.server/email/urllib.request/ssl: start-up imports are
about ten times slower in the VM under QEMU tcg, and the agent must be ready fast.

Modules, from the wire up:

- ``buffered_socket``: socket + read buffer (handed over intact on hijack)
- ``limits``: head/body size limits (431, 413)
- ``request``: request parsing, query helpers, the de-chunked body stream
- ``response``: ``ResponseWriter`` (whole, streamed and hijacked responses)
- ``router``: method + ``/path/{param}`` routing, ``/vX.Y`` prefixes, lazy handlers
- ``connection``: the keep-alive loop of one connection; errors -> ``{"message": …}``
- ``server``: accept loop, a thread per connection; ``unix_listener``: the 0600 socket
- ``versions``: the served API versions; ``routes``: the route table; ``system``: handlers

A handler is ``def handler(request: Request, response: ResponseWriter) -> None``, added to
``routes.build_router`` as ``"agent.api.module:function"`` (imported on first use):

- read: ``request.params["id"]``, ``request.arg("name")``, ``request.args("names")``,
  ``request.flag("force")``, ``request.int_arg("t", 10)``, ``request.header(...)``,
  ``request.json_object()`` / ``request.json()`` / ``request.read_body()`` (413 past
  ``Limits.max_body``), or stream big bodies from ``request.body`` (a raw binary file:
  tar uploads); ``request.version_at_least("1.42")`` for version-dependent output
- answer once: ``response.send_json(value, status)``, ``response.send(status, bytes,
  content_type)``, ``response.send(204)``; or ``stream = response.start_stream(...)`` then
  ``stream.write(...)`` / ``stream.write_json(...)`` / ``stream.flush()`` (chunked; the
  head goes out at once); or ``raw = response.hijack(content_type)`` for attach/exec
  (``101 UPGRADED`` when asked; ``raw.buffered`` / ``raw.recv`` / ``raw.sendall`` /
  ``raw.close_write``; the handler then owns and must close the socket)
- ``response.peer_closed()`` tells a long-polling handler that its client went away
- fail: raise ``agent.errors.AgentError(status, message)`` or ``NotFound``/``Conflict``/
  ``BadRequest``; any other exception becomes a logged 500 with a one-line message
"""
