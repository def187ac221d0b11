"""System endpoints: ``/_ping`` and ``/version``."""

from __future__ import annotations

from agent import __version__, sysinfo
from agent.api.request import Request
from agent.api.response import TEXT_TYPE, ResponseWriter
from agent.api.versions import API_VERSION, MIN_API_VERSION

PLATFORM_NAME = "vmctl agent"
# the classic builder (POST /build?version=1) is the only one the agent implements
BUILDER_VERSION = "1"


def ping(request: Request, response: ResponseWriter) -> None:
    """Liveness and capabilities: clients read Api-Version, Ostype and Builder-Version here."""
    response.set_header("Builder-Version", BUILDER_VERSION)
    response.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
    response.set_header("Pragma", "no-cache")
    response.set_header("Swarm", "inactive")
    response.send(200, b"" if request.method == "HEAD" else b"OK", TEXT_TYPE)


def version_info() -> dict[str, object]:
    """The SystemVersion document (also what the docker SDK negotiates its version from)."""
    arch = sysinfo.go_arch()
    kernel = sysinfo.kernel_version()
    runtime_version = sysinfo.python_version()
    git_commit = sysinfo.git_commit()
    build_time = sysinfo.build_time()
    return {
        "Platform": {"Name": PLATFORM_NAME},
        "Components": [
            {
                "Name": "Engine",
                "Version": __version__,
                # free-form; the docker CLI prints these keys for the Engine component
                "Details": {
                    "ApiVersion": API_VERSION,
                    "Arch": arch,
                    "BuildTime": build_time,
                    "Experimental": "false",
                    "GitCommit": git_commit,
                    "GoVersion": runtime_version,
                    "KernelVersion": kernel,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux",
                    "OperatingSystem": sysinfo.os_description(),
                    "PythonVersion": runtime_version,
                },
            }
        ],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": git_commit,
        # the field is named for dockerd's Go runtime; ours is Python, and we say so
        "GoVersion": runtime_version,
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": build_time,
        "Experimental": False,
    }


def version(request: Request, response: ResponseWriter) -> None:
    response.send_json(version_info())
