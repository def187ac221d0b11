"""The Engine API route table.

Handlers are named as ``"module:function"`` strings so their modules are imported on the
first request that needs them, not at start-up (imports are slow in the VM under tcg).
"""

from __future__ import annotations

from agent.api.router import Router

SYSTEM = "agent.api.system"


def build_router() -> Router:
    router = Router()
    router.add(("GET", "HEAD"), "/_ping", f"{SYSTEM}:ping")
    router.add("GET", "/version", f"{SYSTEM}:version")
    return router
