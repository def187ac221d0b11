"""The rest of the container endpoints: top, stats, changes, export, archive (docker cp),
rename, update and prune, on top of :mod:`agent.containers` (archive, changes, processes,
stats, update, prune)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator

from agent import engine_handle, events
from agent.api.filter_args import parse_filters
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.containers import processes, prune, stats
from agent.containers.archive import Extractor, TarWriter
from agent.containers.changes import container_changes
from agent.containers.container_tree import ContainerTree, MountPoint, clean, stat_header
from agent.containers.manager import ContainerManager
from agent.containers.model import Container
from agent.containers.prepare import network_mode
from agent.containers.rootfs import ETC_FILES
from agent.errors import BadRequest, Conflict, NotFound
from agent.runtime import users

TAR_TYPE = "application/x-tar"
STAT_HEADER = "X-Docker-Container-Path-Stat"
STATS_INTERVAL = 1.0  # seconds between two stats documents, as dockerd
# file systems of a running container a copy of its tree does not descend into
PSEUDO_FILESYSTEMS = frozenset(
    (
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devpts",
        "mqueue",
        "debugfs",
        "tracefs",
        "securityfs",
        "bpf",
        "configfs",
        "fusectl",
        "pstore",
    )
)


def _manager() -> ContainerManager:
    return engine_handle.current().containers


def _container(request: Request) -> Container:
    return _manager().get(request.params["id"])


def _is_running(container: Container) -> bool:
    return container.state.running and container.state.pid > 0


# --- top --------------------------------------------------------------------------------------


def top(request: Request, response: ResponseWriter) -> None:
    manager = _manager()
    container = _container(request)
    if not _is_running(container):
        raise Conflict(f"Container {container.id} is not running")
    cgroup = manager.cgroup_of(container)
    pids = processes.container_pids(
        str(cgroup.path) if cgroup is not None else None, container.state.pid
    )
    ps_args = request.arg("ps_args").strip()
    if ps_args in ("", "-ef"):
        response.send_json(processes.ps_ef(pids))
    else:
        response.send_json(processes.run_ps(ps_args, pids))


# --- stats ------------------------------------------------------------------------------------


def container_stats(request: Request, response: ResponseWriter) -> None:
    manager = _manager()
    container = _container(request)
    streaming = request.flag("stream", True)
    one_shot = request.flag("one-shot")
    if one_shot and streaming:
        raise BadRequest("cannot have stream=true and one-shot=true")
    if not _is_running(container):
        response.send_json(stats.document(container, None, None))  # zeros, as dockerd
        return
    own_network = network_mode(container.host_config) == "bridge"

    def reading() -> stats.Sample:
        return stats.sample(container, manager.cgroup_of(container), own_network)

    first = reading()
    if not streaming:
        if one_shot:
            response.send_json(stats.document(container, first, None))
            return
        # the "pre" figures a second earlier, so that the CPU share can be computed
        if _pause(response, STATS_INTERVAL) and _is_running(container):
            response.send_json(stats.document(container, reading(), first))
        else:
            response.send_json(stats.document(container, first, None))
        return
    out = response.start_stream(200)
    previous, current = None, first
    while True:
        out.write_json(stats.document(container, current, previous))
        if not _pause(response, STATS_INTERVAL) or not _is_running(container):
            return  # the client left, or the container stopped: the stream ends
        previous, current = current, reading()


def _pause(response: ResponseWriter, seconds: float) -> bool:
    """Sleep, watching the client; False when it has gone away."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if response.peer_closed():
            return False
        time.sleep(min(left, 0.1))
    return not response.peer_closed()


# --- changes and export ----------------------------------------------------------------------


def changes(request: Request, response: ResponseWriter) -> None:
    container = _container(request)
    image = engine_handle.current().images.get(container.image_id)
    layers = [str(path) for path in image.layer_dirs]
    response.send_json(container_changes(container.upper, layers))


def export(request: Request, response: ResponseWriter) -> None:
    """The container's root filesystem (no volumes), running or not, as a tar stream."""
    manager = _manager()
    container = _container(request)
    with manager.root_mounted(container) as merged:
        out = response.start_stream(200, TAR_TYPE)
        writer = TarWriter(out)
        writer.add_tree(ContainerTree(merged, name=container.name), "/", None, "")
        writer.close()


# --- archive (docker cp) -----------------------------------------------------------------------


@contextlib.contextmanager
def container_tree(manager: ContainerManager, container: Container) -> Iterator[ContainerTree]:
    """The tree `docker cp` sees: a running container's through /proc/<pid>/root (with every
    mount it has), a stopped one's root filesystem, mounted meanwhile, with its volumes,
    bind mounts and managed /etc files laid over it as its record says."""
    if _is_running(container):
        pid = container.state.pid
        tree = ContainerTree(f"/proc/{pid}/root", name=container.name)
        tree.skip = _pseudo_mounts(pid)
        yield tree
        return
    with manager.root_mounted(container) as merged:
        yield ContainerTree(
            merged,
            _recorded_mounts(container),
            bool(container.host_config.get("ReadonlyRootfs")),
            container.name,
        )


def _recorded_mounts(container: Container) -> list[MountPoint]:
    mounts = [
        MountPoint(clean(str(m["Destination"])), str(m["Source"]), bool(m.get("RW", True)))
        for m in container.mounts
        if m.get("Type") in ("bind", "volume") and m.get("Source")
    ]
    claimed = {m.destination for m in mounts}
    for path in ETC_FILES:
        source = container.etc_file(path.rsplit("/", 1)[1])
        if path not in claimed and container.state.has_been_started:
            mounts.append(MountPoint(path, source, True))
    return mounts


def _pseudo_mounts(pid: int) -> frozenset[str]:
    """Mount points of kernel file systems in the container (its /proc, /sys …)."""
    found = set()
    try:
        with open(f"/proc/{pid}/mountinfo") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                fields, kind = before.split(), after.split()[:1]
                if len(fields) > 4 and kind and kind[0] in PSEUDO_FILESYSTEMS:
                    found.add(clean(fields[4].replace("\\040", " ")))
    except OSError:
        pass
    return frozenset(found)


def archive(request: Request, response: ResponseWriter) -> None:
    """GET: a tar of the path, HEAD: only its stat header."""
    manager = _manager()
    container = _container(request)
    with container_tree(manager, container) as tree:
        cpath, base = tree.locate(request.arg("path"))
        response.set_header(STAT_HEADER, stat_header(tree.path_stat(cpath, base)))
        if request.method == "HEAD":
            response.send(200)
            return
        out = response.start_stream(200, TAR_TYPE)
        writer = TarWriter(out)
        children = "/" if base == "/" else base + "/"
        writer.add_tree(tree, cpath, base, children, tree.skip)
        writer.close()


def put_archive(request: Request, response: ResponseWriter) -> None:
    """Extract the tar in the body into a directory of the container."""
    manager = _manager()
    container = _container(request)
    no_overwrite = request.flag("noOverwriteDirNonDir")
    with container_tree(manager, container) as tree:
        path = request.arg("path")
        tree.locate(path)  # 400 for a bad path, 404 for a missing one
        try:  # the destination's own symlink is followed too
            cpath, _ = tree.locate(path.rstrip("/") + "/")
        except BadRequest:
            raise BadRequest("extraction point is not a directory") from None
        except NotFound:  # a dangling symlink
            raise NotFound(f"Could not find the file {path} in container {tree.name}") from None
        tree.check_writable(cpath)
        owner = None
        user = str(container.config.get("User") or "")
        if request.flag("copyUIDGID") and user:
            # as dockerd: -a gives the entries to the container's user
            try:
                identity = users.resolve(tree.root, user, None)
            except users.UserError as error:
                raise BadRequest(f"cannot copy as the container's user: {error}") from None
            owner = (identity.uid, identity.gid)
        Extractor(tree, cpath, no_overwrite, owner).extract(io.BufferedReader(request.body))
    response.send(200)


# --- rename, update, prune -------------------------------------------------------------------


def rename(request: Request, response: ResponseWriter) -> None:
    _manager().rename(request.params["id"], request.arg("name"))
    response.send(204)


def update(request: Request, response: ResponseWriter) -> None:
    warnings = _manager().update(request.params["id"], request.json_object())
    response.send_json({"Warnings": warnings})


def prune_containers(request: Request, response: ResponseWriter) -> None:
    result = prune.prune(_manager(), parse_filters(request.arg("filters")))
    events.publish("container", "prune", "", {"reclaimed": str(result["SpaceReclaimed"])})
    response.send_json(result)
