"""`docker update`: merge a new resource set and restart policy into a container's HostConfig.

As dockerd does, a field left at its zero value (0, "", null) keeps the current setting; the
merged set is validated like a create's, and the limits the request sets need the cgroup v2
controllers the create would need. The manager writes the result to a running container's
cgroup and then to its record (:meth:`ContainerManager.update`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.containers import options
from agent.errors import BadRequest
from agent.runtime import cgroups

# the HostConfig resource fields `docker update` can change here
RESOURCE_KEYS = (
    "Memory",
    "MemorySwap",
    "MemoryReservation",
    "NanoCpus",
    "CpuShares",
    "CpuPeriod",
    "CpuQuota",
    "CpusetCpus",
    "CpusetMems",
    "PidsLimit",
    "BlkioWeight",
)
NOT_SET: tuple[object, ...] = (None, 0, "", [], {}, False)


@dataclass
class UpdatePlan:
    host_config: dict[str, Any]  # the container's HostConfig after the update
    resources: cgroups.Resources  # all of its limits, to write to a running cgroup
    requested: cgroups.Resources  # only what this request sets (for the controller check)


def plan_update(host_config: dict[str, Any], body: Any) -> UpdatePlan:
    """Validate an update body against the container's HostConfig (400 on any problem)."""
    if not isinstance(body, dict):
        raise BadRequest("the update request body must be a JSON object")
    unsupported = sorted(
        key
        for key, value in body.items()
        if key not in RESOURCE_KEYS and key != "RestartPolicy" and value not in NOT_SET
    )
    if unsupported:
        raise BadRequest(f"updating {', '.join(unsupported)} is not supported")
    changes = {
        key: body[key]
        for key in RESOURCE_KEYS
        # PidsLimit 0 or -1 lifts the limit; null leaves it
        if body.get(key) not in (None, 0, "") or (key == "PidsLimit" and body.get(key) == 0)
    }
    merged = {**host_config, **changes}
    policy = body.get("RestartPolicy")
    if policy is not None and not isinstance(policy, dict):
        raise BadRequest("RestartPolicy must be an object")
    if policy and policy.get("Name"):
        if host_config.get("AutoRemove") and policy["Name"] != "no":
            raise BadRequest(
                "Restart policy cannot be updated because AutoRemove is enabled for the container"
            )
        try:
            options.restart_policy(policy, False)
        except options.OptionError as error:
            raise BadRequest(str(error)) from None
        merged["RestartPolicy"] = {
            "Name": policy["Name"],
            "MaximumRetryCount": int(policy.get("MaximumRetryCount") or 0),
        }
    requested = cgroups.Resources.from_host_config(changes, update=True)
    old_swap = host_config.get("MemorySwap") or 0
    if requested.memory > 0 and not requested.memory_swap and 0 < old_swap < requested.memory:
        raise BadRequest(
            "Memory limit should be smaller than already set memoryswap limit, update the "
            "memoryswap at the same time"
        )
    resources = cgroups.Resources.from_host_config(merged, update=True)
    return UpdatePlan(merged, resources, requested)


def check_controllers(requested: cgroups.Resources, hierarchy: cgroups.Hierarchy | None) -> None:
    """Refuse limits this host cannot enforce, as a create would."""
    needed = requested.controllers_needed()
    if not needed:
        return
    if hierarchy is None:
        raise BadRequest(
            "resource limits need cgroup v2, which this host does not have mounted; "
            "update only the restart policy, or use the vmctl VM"
        )
    missing = needed - hierarchy.available()
    if missing:
        flags = [flag for controller, flag in requested.requests() if controller in missing]
        raise BadRequest(
            f"cannot update {', '.join(flags)}: this host's cgroup v2 hierarchy has no "
            f"{' or '.join(sorted(missing))} controller; nothing was changed (the vmctl VM "
            "has them)"
        )


def warnings_for(resources: cgroups.Resources, cgroup: cgroups.Cgroup) -> list[str]:
    if resources.swap_max() is not None and not (cgroup.path / "memory.swap.max").exists():
        return [
            "Your kernel does not support swap limit capabilities or the cgroup is not "
            "mounted. Memory limited without swap."
        ]
    return []
