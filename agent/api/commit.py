"""POST /commit: a container's changes as a new image (`docker commit`)."""

from __future__ import annotations

from typing import Any

from agent import engine_handle
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.errors import BadRequest
from agent.images.commit import commit_container


def commit(request: Request, response: ResponseWriter) -> None:
    name = request.arg("container")
    if not name:
        raise BadRequest("commit needs a container (the container query parameter)")
    repo, tag = request.arg("repo"), request.arg("tag")
    if tag and not repo:
        raise BadRequest("a tag needs a repository (repo) to go with it")
    reference = f"{repo}:{tag}" if repo and tag else repo or None
    body = request.json(default=None)
    if body is not None and not isinstance(body, dict):
        raise BadRequest("the commit request body must be a container config (a JSON object)")
    config: dict[str, Any] | None = body or None
    engine = engine_handle.current()
    container = engine.containers.get(name)
    image_id = commit_container(
        engine,
        container.id,
        reference=reference,
        # one changes=… per --change (older clients: one value, a line per change)
        changes=request.args("changes"),
        author=request.arg("author"),
        comment=request.arg("comment"),
        pause=request.flag("pause", default=True),
        config=config,
    )
    attributes = {"comment": request.arg("comment"), "imageID": image_id}
    if reference:
        attributes["imageRef"] = reference
    engine.containers.on_event("commit", container, attributes)
    response.send_json({"Id": image_id}, 201)
