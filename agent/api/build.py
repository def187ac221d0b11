"""POST /build: the classic builder (``DOCKER_BUILDKIT=0 docker build``).

The body is the context as a tar (maybe compressed); the query names the Dockerfile in it,
the tags, build args, target and cache options. The context is unpacked first (a broken
one is a 400); then the answer is a JSON stream of ``{"stream": ...}`` progress lines, the
image id as ``{"aux": {"ID": ...}}``, and, when a step fails, ``{"errorDetail": ...}`` as
the last message (the docker CLI prints it and exits 1).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from agent import engine_handle, events
from agent.api.request import Request
from agent.api.response import JSON_TYPE, ResponseStream, ResponseWriter
from agent.build.builder import Builder, BuildOptions
from agent.build.context import extract
from agent.errors import AgentError, BadRequest
from agent.images.reference import InvalidReference, Reference, familiar, parse

log = logging.getLogger(__name__)


def _json_arg(request: Request, name: str, kind: type) -> Any:
    text = request.arg(name).strip()
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as error:
        raise BadRequest(f"invalid {name}: not JSON: {error}") from None
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise BadRequest(f"invalid {name}: expected a JSON {kind.__name__}")
    return value


def _tags(request: Request) -> list[Reference]:
    tags = []
    for text in request.args("t"):
        try:
            ref = parse(text)
        except InvalidReference as error:
            raise BadRequest(f"invalid tag {text!r}: {error}") from None
        if ref.digest:
            raise BadRequest(f"invalid tag {text!r}: a tag cannot hold a digest")
        tags.append(ref if ref.tag else ref.with_tag("latest"))
    return tags


def options_from(request: Request) -> BuildOptions:
    if request.arg("remote"):
        raise BadRequest(
            "remote build contexts (git repositories, URLs) are not supported: send the "
            "context as the request body"
        )
    build_args = _json_arg(request, "buildargs", dict)
    labels = _json_arg(request, "labels", dict)
    if not all(isinstance(v, str | None) for v in build_args.values()):
        raise BadRequest("invalid buildargs: values must be strings")
    if not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest("invalid labels: values must be strings")
    return BuildOptions(
        dockerfile=request.arg("dockerfile", "Dockerfile") or "Dockerfile",
        build_args=build_args,
        target=request.arg("target"),
        no_cache=request.flag("nocache"),
        labels=labels,
        quiet=request.flag("q"),
        remove=request.flag("rm", default=True),
        force_remove=request.flag("forcerm"),
        platform=request.arg("platform"),
        network_mode=request.arg("networkmode"),
    )


def build(request: Request, response: ResponseWriter) -> None:
    options = options_from(request)
    tags = _tags(request)
    engine = engine_handle.current()
    work = Path(tempfile.mkdtemp(dir=engine.images.tmp_dir, prefix="build-"))
    try:
        context = work / "context"
        context.mkdir()
        body = io.BufferedReader(cast(Any, request.body), 1 << 16)
        extract(cast(BinaryIO, body), context)
        emit: list[Callable[[object], None]] = []
        builder = Builder(engine, context, options, lambda message: emit[0](message), work)
        stream = response.start_stream(200, JSON_TYPE)
        emit.append(stream.write_json)
        _run(builder, stream, tags)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(builder: Builder, stream: ResponseStream, tags: list[Reference]) -> None:
    try:
        image_id = builder.build()
        stream.write_json({"aux": {"ID": image_id}})
        if builder.options.quiet:  # `docker build -q` prints the stream: the id alone
            stream.write_json({"stream": image_id + "\n"})
        builder.say(f"Successfully built {image_id.removeprefix('sha256:')[:12]}\n")
        for tag in tags:
            builder.store.tag(image_id, tag)
            _emit_tag(image_id, familiar(tag))
            builder.say(f"Successfully tagged {familiar(tag)}\n")
    except (BrokenPipeError, ConnectionError):
        log.info("the client went away during a build")
        return
    except AgentError as error:
        _error(stream, error.message)
    except Exception as error:  # a fault of ours: reported in the stream, not as a traceback
        log.exception("build failed")
        _error(stream, f"internal error during the build: {error}")
    with contextlib.suppress(BrokenPipeError, ConnectionError):
        stream.close()


def _error(stream: ResponseStream, message: str) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionError):
        stream.write_json({"errorDetail": {"message": message}, "error": message})


def _emit_tag(image_id: str, name: str) -> None:
    try:
        events.publish("image", "tag", image_id, {"name": name})
    except Exception:  # an event must never fail the build that caused it
        log.exception("image tag event for %s failed", image_id)
