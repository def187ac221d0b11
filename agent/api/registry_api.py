"""Registry endpoints of the Engine API: pull (POST /images/create?fromImage=),
push (POST /images/{name}/push) and login (POST /auth).

Failures found before the first progress message (unknown repository, bad credentials, no
such platform, no such local image) are error statuses; later ones go into the stream as
``{"errorDetail": …, "error": …}``, as dockerd sends them.
"""

from __future__ import annotations

import logging
import urllib.parse

from agent import engine_handle, events
from agent.api.request import Request
from agent.api.response import JSON_TYPE, ResponseWriter
from agent.errors import AgentError, BadRequest, NotFound
from agent.images.reference import Reference, familiar, parse
from agent.images.store import ImageNotFound
from agent.registry import auth, manifest, options, pull, push
from agent.registry.client import RegistryError, RepositoryClient, Unauthorized
from agent.registry.endpoint import resolve
from agent.registry.progress import Progress

log = logging.getLogger(__name__)


def _places() -> pull.Places:
    return pull.Places.under(engine_handle.current().root)


def _credentials(request: Request) -> auth.Credentials:
    return auth.decode_header(request.header("X-Registry-Auth"))


def _emit(action: str, image_id: str, name: str) -> None:
    try:
        events.publish("image", action, image_id, {"name": name})
    except Exception:  # an event must never fail the request that caused it
        log.exception("image event %s failed", action)


def pull_reference(name: str, tag: str) -> Reference:
    ref = parse(name, default_tag=None)
    if tag:
        ref = parse(f"{ref.name}@{tag}" if ":" in tag else f"{ref.name}:{tag}")
    elif not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    return ref


def pull_image(request: Request, response: ResponseWriter) -> None:
    """POST /images/create?fromImage=…&tag=…&platform=…"""
    ref = pull_reference(request.arg("fromImage"), request.arg("tag"))
    wanted = manifest.parse_platform(request.arg("platform"))
    engine = engine_handle.current()
    plan = pull.prepare(
        ref, _credentials(request), wanted, engine.images, _places(), options.current()
    )
    stream = response.start_stream(200, JSON_TYPE)
    progress = Progress(stream)
    try:
        image = plan.run(progress)
    except AgentError as error:
        progress.error(error.message)
    except Exception as error:
        log.exception("pulling %s failed", ref)
        progress.error(f"pulling {familiar(ref)} failed: {error}")
    else:
        _emit("pull", image.id, familiar(ref))
    finally:
        plan.client.close()
    stream.close()


def push_image(request: Request, response: ResponseWriter) -> None:
    """POST /images/{name}/push?tag=…; no tag pushes every tag of the repository."""
    ref = parse(request.params["name"], default_tag=None)
    if ref.digest:
        raise BadRequest("cannot push a digest reference; push a tag")
    tag = request.arg("tag")
    store = engine_handle.current().images
    if tag:
        targets = [parse(f"{ref.name}:{tag}")]
    elif ref.tag:
        targets = [ref]
    else:
        targets = sorted(
            (p for p in map(parse, store.tags()) if p.name == ref.name), key=lambda r: r.tag
        )
    if not targets:
        raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name}")
    creds = _credentials(request)
    pushers = []
    try:
        for target in targets:
            try:
                pushers.append(push.prepare(target, creds, store, _places(), options.current()))
            except ImageNotFound:
                raise NotFound(
                    f"An image does not exist locally with the tag: {familiar(target)}"
                ) from None
            except Unauthorized as error:
                raise AgentError(
                    403, f"push to {familiar(target)} refused: {error.message}"
                ) from None
        stream = response.start_stream(200, JSON_TYPE)
        progress = Progress(stream)
        progress.status(f"The push refers to repository [{ref.name}]")
        for pusher in pushers:
            try:
                pushed = pusher.run(progress)
            except AgentError as error:
                progress.error(error.message)
                break
            except Exception as error:
                log.exception("pushing %s failed", pusher.ref)
                progress.error(f"pushing {familiar(pusher.ref)} failed: {error}")
                break
            progress.status(f"{pushed.tag}: digest: {pushed.digest} size: {pushed.size}")
            progress.send(
                {
                    "progressDetail": {},
                    "aux": {"Tag": pushed.tag, "Digest": pushed.digest, "Size": pushed.size},
                }
            )
            _emit("push", pusher.image.id, familiar(pusher.ref))
        stream.close()
    finally:
        for pusher in pushers:
            pusher.client.close()


def server_name(address: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``localhost:5000`` as it is."""
    if "://" in address:
        address = urllib.parse.urlsplit(address).netloc
    address = address.split("/")[0]
    if address in ("", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return address


def login(request: Request, response: ResponseWriter) -> None:
    """POST /auth: check the credentials against the registry, as `docker login` asks."""
    body = request.json_object()
    creds = auth.from_json(body)
    address = body.get("serveraddress") or ""
    if not isinstance(address, str):
        raise BadRequest("serveraddress must be a string")
    try:
        endpoint = resolve(server_name(address), options.current())
    except ValueError as error:
        raise BadRequest(f"{error}; log in with `docker login HOST[:PORT]`") from None
    client = RepositoryClient(endpoint, "", creds, "", options.current())
    try:
        client.request("GET", "/v2/").read()  # a 401 is answered with the credentials
    except Unauthorized as error:
        message = error.message
        if creds.anonymous:
            message = f"login to {endpoint.name} needs a username and password: {message}"
        raise AgentError(401, message) from None
    except RegistryError as error:
        raise AgentError(error.status if error.status >= 400 else 502, error.message) from None
    finally:
        client.close()
    response.send_json({"Status": "Login Succeeded", "IdentityToken": ""})
