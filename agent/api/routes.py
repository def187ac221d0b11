"""The Engine API route table.

Handlers are named as ``"module:function"`` strings so their modules are imported on the
first request that needs them, not at start-up (imports are slow in the VM under tcg).
"""

from __future__ import annotations

from agent.api.router import Router

SYSTEM = "agent.api.system"
CONTAINERS = "agent.api.containers"
EXECS = "agent.api.execs"


def build_router() -> Router:
    router = Router()
    router.add(("GET", "HEAD"), "/_ping", f"{SYSTEM}:ping")
    router.add("GET", "/version", f"{SYSTEM}:version")

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

    router.add("POST", "/containers/{id}/exec", f"{EXECS}:create")
    router.add("POST", "/exec/{id}/start", f"{EXECS}:start")
    router.add("POST", "/exec/{id}/resize", f"{EXECS}:resize")
    router.add("GET", "/exec/{id}/json", f"{EXECS}:inspect")
    return router
