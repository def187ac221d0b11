"""The Engine API route table.

Handlers are named as ``"module:function"`` strings so their modules are imported on the
first request that needs them, not at start-up (imports are slow in the VM under tcg).
"""

from __future__ import annotations

from agent.api.router import Router

SYSTEM = "agent.api.system"
CONTAINERS = "agent.api.containers"
EXECS = "agent.api.execs"
EXTRAS = "agent.api.container_extras"
VOLUMES = "agent.api.volumes"
NETWORKS = "agent.api.networks"
IMAGES = "agent.api.images"
REGISTRY = "agent.api.registry_api"


def build_router() -> Router:
    router = Router()
    router.add(("GET", "HEAD"), "/_ping", f"{SYSTEM}:ping")
    router.add("GET", "/version", f"{SYSTEM}:version")
    router.add("GET", "/info", f"{SYSTEM}:info")
    router.add("GET", "/system/df", f"{SYSTEM}:system_df")
    router.add("GET", "/events", f"{SYSTEM}:events")
    router.add("POST", "/auth", f"{REGISTRY}:login")
    # private: vmctl's host agent publishes ports on the host (agent/api/publisher.py)
    router.add("GET", "/_vmctl/publisher", "agent.api.publisher:stream")
    router.add("POST", "/_vmctl/publisher/{id}", "agent.api.publisher:answer")

    router.add("POST", "/volumes/create", f"{VOLUMES}:create")
    router.add("POST", "/volumes/prune", f"{VOLUMES}:prune")
    router.add("GET", "/volumes", f"{VOLUMES}:list_volumes")
    router.add("GET", "/volumes/{name}", f"{VOLUMES}:inspect_volume")
    router.add("DELETE", "/volumes/{name}", f"{VOLUMES}:remove")

    router.add("GET", "/networks", f"{NETWORKS}:list_networks")
    router.add("POST", "/networks/create", f"{NETWORKS}:create")
    router.add("POST", "/networks/prune", f"{NETWORKS}:prune")
    router.add("GET", "/networks/{id}", f"{NETWORKS}:inspect_network")
    router.add("DELETE", "/networks/{id}", f"{NETWORKS}:remove")
    router.add("POST", "/networks/{id}/connect", f"{NETWORKS}:connect")
    router.add("POST", "/networks/{id}/disconnect", f"{NETWORKS}:disconnect")

    # the literal paths first: image names may contain slashes ({name:.+})
    router.add("GET", "/images/json", f"{IMAGES}:list_images")
    router.add("POST", "/images/create", f"{IMAGES}:create")
    router.add("POST", "/images/load", f"{IMAGES}:load")
    router.add("POST", "/images/prune", f"{IMAGES}:prune")
    router.add("POST", "/build", "agent.api.build:build")
    router.add("GET", "/images/get", f"{IMAGES}:save_images")
    router.add("GET", "/images/{name:.+}/json", f"{IMAGES}:inspect_image")
    router.add("GET", "/images/{name:.+}/history", f"{IMAGES}:image_history")
    router.add("POST", "/images/{name:.+}/tag", f"{IMAGES}:tag_image")
    router.add("POST", "/images/{name:.+}/push", f"{REGISTRY}:push_image")
    router.add("GET", "/images/{name:.+}/get", f"{IMAGES}:save_image")
    router.add("DELETE", "/images/{name:.+}", f"{IMAGES}:remove_image")
    router.add("POST", "/commit", "agent.api.commit:commit")

    router.add("GET", "/containers/json", f"{CONTAINERS}:list_containers")
    router.add("POST", "/containers/create", f"{CONTAINERS}:create")
    router.add("GET", "/containers/{id}/json", f"{CONTAINERS}:inspect_container")
    router.add("POST", "/containers/{id}/start", f"{CONTAINERS}:start")
    router.add("POST", "/containers/{id}/stop", f"{CONTAINERS}:stop")
    router.add("POST", "/containers/{id}/restart", f"{CONTAINERS}:restart")
    router.add("POST", "/containers/{id}/kill", f"{CONTAINERS}:kill")
    router.add("POST", "/containers/{id}/pause", f"{CONTAINERS}:pause")
    router.add("POST", "/containers/{id}/unpause", f"{CONTAINERS}:unpause")
    router.add("POST", "/containers/{id}/wait", f"{CONTAINERS}:wait")
    router.add("POST", "/containers/{id}/attach", f"{CONTAINERS}:attach")
    router.add("POST", "/containers/{id}/resize", f"{CONTAINERS}:resize")
    router.add("GET", "/containers/{id}/logs", f"{CONTAINERS}:logs")
    router.add("DELETE", "/containers/{id}", f"{CONTAINERS}:remove")
    router.add("POST", "/containers/prune", f"{EXTRAS}:prune_containers")
    router.add("GET", "/containers/{id}/top", f"{EXTRAS}:top")
    router.add("GET", "/containers/{id}/stats", f"{EXTRAS}:container_stats")
    router.add("GET", "/containers/{id}/changes", f"{EXTRAS}:changes")
    router.add("GET", "/containers/{id}/export", f"{EXTRAS}:export")
    router.add(("GET", "HEAD"), "/containers/{id}/archive", f"{EXTRAS}:archive")
    router.add("PUT", "/containers/{id}/archive", f"{EXTRAS}:put_archive")
    router.add("POST", "/containers/{id}/rename", f"{EXTRAS}:rename")
    router.add("POST", "/containers/{id}/update", f"{EXTRAS}:update")

    router.add("POST", "/containers/{id}/exec", f"{EXECS}:create")
    router.add("POST", "/exec/{id}/start", f"{EXECS}:start")
    router.add("POST", "/exec/{id}/resize", f"{EXECS}:resize")
    router.add("GET", "/exec/{id}/json", f"{EXECS}:inspect")
    return router
