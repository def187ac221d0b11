"""The classic builder: a Dockerfile evaluated step by step, each step a real image.

Every instruction after FROM makes an image (untagged, like dockerd's classic builder):
the metadata-only ones a config with an ``empty_layer`` history entry, RUN the committed
changes of a container run from the current image, COPY/ADD/WORKDIR the files written into
a container's mounted root (or, on an image with no layers yet, a layer of their own).
Steps are cached: the key is the parent image id, the history text of the step (which
holds the variables RUN sees and, for COPY/ADD, a hash of the copied content) and the
source image of COPY --from; it maps to the image the step made (:mod:`agent.build.cache`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import sysinfo
from agent.build import instructions as ins
from agent.build import variables
from agent.build.cache import BuildCache
from agent.build.context import clean_source, content_hash, resolve_sources
from agent.build.copying import copy_sources, destination, ownership
from agent.build.errors import BuildError
from agent.build.fetch import download
from agent.build.parser import Dockerfile, Instruction, parse, parse_line
from agent.errors import AgentError
from agent.images.config_changes import apply_changes
from agent.images.importer import now_rfc3339, parse_platform
from agent.images.store import Image
from agent.runtime.logfile import parse_line as parse_log_line

if TYPE_CHECKING:
    from agent.engine import Engine

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
_PLATFORM_FIELDS = ("architecture", "os", "os.version", "os.features", "variant")
# args every build may set without declaring them, never reported as unused
PREDEFINED_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
)
_NOT_IN_ONBUILD = frozenset({"ONBUILD", "FROM", "MAINTAINER"})
_BUILDKIT_FLAGS = frozenset({"link", "checksum", "keep-git-dir"})


@dataclass
class BuildOptions:
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str | None] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    remove: bool = True  # rm: intermediate containers of successful steps
    force_remove: bool = False  # forcerm: of failed ones too
    platform: str = ""
    network_mode: str = ""


@dataclass
class Stage:
    name: str  # the alias (lower case) or its index
    image: Image | None  # None: FROM scratch with nothing built yet
    config: dict[str, Any]
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False
    author: str = ""

    @property
    def image_id(self) -> str:
        return self.image.id if self.image is not None else ""

    def env(self) -> dict[str, str]:
        """The variables substitution sees: declared args, overridden by the config's Env."""
        values = {k: v for k, v in self.args.items() if v is not None}
        for item in self.config.get("Env") or []:
            key, _, value = str(item).partition("=")
            values[key] = value
        return values

    def env_list(self) -> list[str]:
        return [str(item) for item in self.config.get("Env") or []]

    def run_args(self) -> list[str]:
        """The args a RUN sees that ENV does not shadow, sorted as "k=v"."""
        env_names = {str(item).partition("=")[0] for item in self.config.get("Env") or []}
        return sorted(
            f"{k}={v}" for k, v in self.args.items() if v is not None and k not in env_names
        )


@dataclass
class _Step:
    instruction: Instruction
    label: str  # "Step 3/9 : COPY . /app" (empty for ONBUILD triggers)


class Builder:
    def __init__(
        self, engine: Engine, context: Path, options: BuildOptions, emit: Emit, work: Path
    ) -> None:
        self.engine = engine
        self.store = engine.images
        self.manager = engine.containers
        self.context = str(context)
        self.options = options
        self.emit = emit
        self.work = work  # scratch space for downloads (ADD URL)
        self.cache = BuildCache(Path(engine.root) / "build-cache", self.store)
        self.stages: list[Stage] = []
        self.global_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.escape = "\\"
        self.platform = parse_platform(options.platform)
        self._check_arch(self.platform, options.platform)

    # --- output ------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if not self.options.quiet:
            self.emit({"stream": text})

    # --- the build ---------------------------------------------------------------------

    def build(self) -> str:
        dockerfile = self._read_dockerfile()
        self.escape = dockerfile.escape
        prelude, stages = _split_stages(dockerfile)
        stages = self._up_to_target(stages)
        total = sum(len(s) for s in stages) + len(prelude) + (1 if self.options.labels else 0)
        number = 0
        for instruction in prelude:
            number += 1
            self.say(f"Step {number}/{total} : {instruction.original}\n")
            self._global_arg(instruction)
        for index, block in enumerate(stages):
            for position, instruction in enumerate(block):
                number += 1
                self.say(f"Step {number}/{total} : {instruction.original}\n")
                if position == 0:
                    self._from(instruction, index)
                else:
                    self._dispatch(self.stages[-1], instruction)
                self.say(f" ---> {self._short(self.stages[-1])}\n")
            if index == len(stages) - 1 and self.options.labels:
                number += 1
                text = " ".join(
                    f"{json.dumps(k)}={json.dumps(v)}" for k, v in self.options.labels.items()
                )
                self.say(f"Step {number}/{total} : LABEL {text}\n")
                self._dispatch(self.stages[-1], parse_line(f"LABEL {text}", 0))
                self.say(f" ---> {self._short(self.stages[-1])}\n")
        final = self.stages[-1]
        if final.image is None:
            raise BuildError("No image was generated. Is your Dockerfile empty?")
        unused = sorted(
            name
            for name in self.options.build_args
            if name not in self.used_args and name not in PREDEFINED_ARGS
        )
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        return final.image.id

    @staticmethod
    def _short(stage: Stage) -> str:
        return stage.image_id.removeprefix("sha256:")[:12] or "scratch"

    def _read_dockerfile(self) -> Dockerfile:
        name = self.options.dockerfile or "Dockerfile"
        relative = clean_source(name, "Dockerfile")
        path = os.path.join(self.context, relative)
        try:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BuildError(f"Cannot locate specified Dockerfile: {name}") from None
        try:
            return parse(text)
        except BuildError as error:
            if "cannot be empty" in error.message:
                raise BuildError(f"the Dockerfile ({name}) cannot be empty") from None
            raise

    def _up_to_target(self, stages: list[list[Instruction]]) -> list[list[Instruction]]:
        target = self.options.target.lower()
        if not target:
            return stages
        for index, block in enumerate(stages):
            if _alias(block[0]) == target:
                return stages[: index + 1]
        raise BuildError(f"failed to reach build target {self.options.target} in Dockerfile")

    # --- ARG ---------------------------------------------------------------------------

    def _arg_value(self, name: str, default: str | None, inherited: str | None) -> str | None:
        if name in self.options.build_args:
            self.used_args.add(name)
            given = self.options.build_args[name]
            if given is not None:
                return given
        return default if default is not None else inherited

    def _global_arg(self, instruction: Instruction) -> None:
        if instruction.keyword != "ARG":
            raise BuildError(
                f"{instruction.keyword} must come after a FROM: only ARG may precede the first FROM"
            )
        env = {k: v for k, v in self.global_args.items() if v is not None}
        for name, default in ins.arg_declaration(instruction, env, self.escape):
            self.global_args[name] = self._arg_value(name, default, None)

    # --- FROM --------------------------------------------------------------------------

    def _from(self, instruction: Instruction, index: int) -> None:
        env = {k: v for k, v in self.global_args.items() if v is not None}
        words = variables.words(instruction.args, env, self.escape)
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise BuildError(
                "FROM requires either one or three arguments: FROM <image> [AS <name>]"
            )
        platform_text = variables.substitute(instruction.flag("platform"), env, self.escape)
        if platform_text:
            self._check_arch(parse_platform(platform_text), platform_text)
        base = words[0]
        name = words[2].lower() if len(words) == 3 else str(index)
        earlier = self._stage_named(base)
        if earlier is not None:
            image = earlier.image
            config = copy.deepcopy(earlier.config)
        elif base.lower() == "scratch":
            image, config = None, {}
        else:
            image = self._base_image(base)
            config = copy.deepcopy(image.config.get("config") or {})
        stage = Stage(name, image, config)
        self.stages.append(stage)
        triggers = [str(t) for t in config.get("OnBuild") or []]
        if triggers:
            config["OnBuild"] = None  # triggers run once, in the direct child
            word = "trigger" if len(triggers) == 1 else "triggers"
            self.say(f"# Executing {len(triggers)} build {word}\n")
            for trigger in triggers:
                step = parse_line(trigger, instruction.line, self.escape)
                if step.keyword in _NOT_IN_ONBUILD:
                    raise BuildError(f"{step.keyword} isn't allowed as an ONBUILD trigger")
                self._dispatch(stage, step)

    def _stage_named(self, name: str) -> Stage | None:
        lowered = name.lower()
        for stage in self.stages:
            if stage.name == lowered and not stage.name.isdigit():
                return stage
        return None

    def _base_image(self, name: str) -> Image:
        """The stage's base: from the store, else pulled (anonymously), as docker does."""
        try:
            return self.store.get(name)
        except AgentError:
            pass
        from agent.registry.progress import Progress
        from agent.registry.pull import pull

        emit = self.emit

        class Sink:
            def write_json(self, value: object, flush: bool = True) -> None:
                emit(value)  # type: ignore[arg-type]

        try:
            progress = Progress(None if self.options.quiet else Sink())
            return pull(name, self.store, self.engine.root, progress=progress)
        except AgentError as error:
            raise BuildError(f"FROM {name}: {error.message}") from None

    def _check_arch(self, platform: tuple[str, str, str], text: str) -> None:
        if platform[1] != sysinfo.go_arch():
            raise BuildError(
                f"platform {text!r} is not supported: this engine builds for "
                f"linux/{sysinfo.go_arch()} only"
            )

    # --- the other instructions --------------------------------------------------------

    def _dispatch(self, stage: Stage, instruction: Instruction) -> None:
        keyword = instruction.keyword
        if keyword == "FROM":
            raise BuildError("FROM is only allowed at the start of a stage")
        handler = getattr(self, f"_do_{keyword.lower()}")
        handler(stage, instruction)

    def _do_arg(self, stage: Stage, instruction: Instruction) -> None:
        declared = ins.arg_declaration(instruction, stage.env(), self.escape)
        parts = []
        for name, default in declared:
            stage.args[name] = self._arg_value(name, default, self.global_args.get(name))
            parts.append(name if default is None else f"{name}={default}")
        self._nop(stage, "ARG " + " ".join(parts))

    def _do_env(self, stage: Stage, instruction: Instruction) -> None:
        pairs = ins.key_values(instruction, stage.env(), self.escape)
        env = {str(i).partition("=")[0]: str(i).partition("=")[2] for i in stage.env_list()}
        env.update(pairs)
        stage.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._nop(stage, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))

    def _do_label(self, stage: Stage, instruction: Instruction) -> None:
        pairs = ins.key_values(instruction, stage.env(), self.escape)
        labels = dict(stage.config.get("Labels") or {})
        labels.update(pairs)
        stage.config["Labels"] = labels
        self._nop(stage, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs))

    def _do_maintainer(self, stage: Stage, instruction: Instruction) -> None:
        stage.author = variables.substitute(instruction.args, stage.env(), self.escape)
        self._nop(stage, f"MAINTAINER {stage.author}")

    def _do_expose(self, stage: Stage, instruction: Instruction) -> None:
        ports = ins.exposed_ports(variables.words(instruction.args, stage.env(), self.escape))
        exposed = dict(stage.config.get("ExposedPorts") or {})
        exposed.update({port: {} for port in ports})
        stage.config["ExposedPorts"] = exposed
        self._nop(stage, "EXPOSE " + " ".join(ports))

    def _do_user(self, stage: Stage, instruction: Instruction) -> None:
        user = variables.substitute(instruction.args, stage.env(), self.escape)
        if not user:
            raise BuildError("USER requires exactly one argument")
        stage.config["User"] = user
        self._nop(stage, f"USER {user}")

    def _do_stopsignal(self, stage: Stage, instruction: Instruction) -> None:
        signal = variables.substitute(instruction.args, stage.env(), self.escape)
        stage.config = apply_changes(stage.config, [f"STOPSIGNAL {signal}"])
        self._nop(stage, f"STOPSIGNAL {signal}")

    def _do_volume(self, stage: Stage, instruction: Instruction) -> None:
        paths = ins.path_list(instruction, stage.env(), self.escape)
        if not paths or any(not p.strip() for p in paths):
            raise BuildError("VOLUME specified can not be an empty string")
        volumes = dict(stage.config.get("Volumes") or {})
        volumes.update({path: {} for path in paths})
        stage.config["Volumes"] = volumes
        self._nop(stage, f"VOLUME [{' '.join(paths)}]")

    def _do_cmd(self, stage: Stage, instruction: Instruction) -> None:
        stage.config["Cmd"] = ins.command(instruction, stage.config.get("Shell"))
        stage.cmd_set = True
        self._nop(stage, f"CMD {ins.go_list(stage.config['Cmd'])}")

    def _do_entrypoint(self, stage: Stage, instruction: Instruction) -> None:
        stage.config["Entrypoint"] = ins.command(instruction, stage.config.get("Shell"))
        if not stage.cmd_set:
            stage.config["Cmd"] = None  # a new entrypoint drops the base image's CMD
        self._nop(stage, f"ENTRYPOINT {ins.go_list(stage.config['Entrypoint'])}")

    def _do_shell(self, stage: Stage, instruction: Instruction) -> None:
        stage.config["Shell"] = ins.shell_form(instruction)
        self._nop(stage, f"SHELL [{' '.join(stage.config['Shell'])}]")

    def _do_healthcheck(self, stage: Stage, instruction: Instruction) -> None:
        stage.config = apply_changes(stage.config, [f"HEALTHCHECK {instruction.args}"])
        self._nop(stage, f"HEALTHCHECK {instruction.args}")

    def _do_onbuild(self, stage: Stage, instruction: Instruction) -> None:
        trigger = instruction.args
        parse_line(trigger, instruction.line, self.escape)  # a bad trigger fails now
        stage.config = apply_changes(stage.config, [f"ONBUILD {trigger}"])
        self._nop(stage, f"ONBUILD {trigger}")

    def _do_workdir(self, stage: Stage, instruction: Instruction) -> None:
        path = variables.substitute(instruction.args, stage.env(), self.escape)
        if not path:
            raise BuildError("WORKDIR requires exactly one argument")
        if not path.startswith("/"):
            path = os.path.join(stage.config.get("WorkingDir") or "/", path)
        path = os.path.normpath(path)
        stage.config["WorkingDir"] = path

        def make(root: str) -> None:
            from agent.runtime.rootpath import makedirs_in

            makedirs_in(root, path)

        self._files(stage, f"WORKDIR {path}", make, extra="", empty_ok=False)

    # --- RUN ---------------------------------------------------------------------------

    def _do_run(self, stage: Stage, instruction: Instruction) -> None:
        cmd = ins.command(instruction, stage.config.get("Shell"))
        args = stage.run_args()
        self.used_args.update(a.partition("=")[0] for a in args)
        created_by = " ".join(cmd)
        if args:
            created_by = f"|{len(args)} {' '.join(args)} {created_by}"
        if self._cached(stage, created_by, ""):
            return
        if stage.image is None or not stage.image.layer_dirs:
            raise BuildError(
                f"The command '{' '.join(cmd)}' cannot run: the image has no files yet "
                "(FROM scratch)"
            )
        body = {
            "Image": stage.image.id,
            "Cmd": cmd,
            "Entrypoint": [],
            "Env": [*stage.env_list(), *args],
            "HostConfig": {"NetworkMode": self.options.network_mode or "default"},
        }
        container = self.manager.create(body)
        self.say(f" ---> Running in {container.id[:12]}\n")
        succeeded = failed = False
        try:
            self.manager.start(container.id)
            code = self._follow(container)
            if code != 0:
                failed = True  # the command's own failure: the container stays, as in docker
                raise BuildError(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}")
            image_id = self._commit(stage, container.id, created_by)
            succeeded = True
        finally:
            # anything else (the client went away, a fault) never leaves it running
            self._remove(container.id, succeeded, force=not (succeeded or failed))
        self._advance(stage, image_id, created_by, "")

    def _follow(self, container: Any) -> int:
        """Stream the container's output (its json log) until it exits; its exit code."""
        offset = 0
        pending = b""
        done = False
        while True:
            try:
                with open(container.log_file, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                entry = parse_log_line(line)
                if entry is not None:
                    self.say(entry.data.decode("utf-8", errors="replace"))
            if done:
                return self.manager.wait(container.id, timeout=0.1)
            if not container.state.running:
                done = True  # one more read: what it wrote last
                continue
            time.sleep(0.02)

    def _commit(self, stage: Stage, container_id: str, created_by: str) -> str:
        from agent.images.commit import commit_container

        config = self._image_config(stage)
        return commit_container(
            self.engine,
            container_id,
            pause=False,
            config_override=config,
            created_by=created_by,
            author=stage.author,
            empty_layer_ok=True,
        )

    def _remove(self, container_id: str, succeeded: bool, force: bool = False) -> None:
        if (succeeded and self.options.remove) or self.options.force_remove or force:
            try:
                self.manager.remove(container_id, force=True)
            except AgentError as error:
                log.warning("could not remove build container %s: %s", container_id, error)
                return
            if succeeded:
                self.say(f" ---> Removed intermediate container {container_id[:12]}\n")

    # --- COPY / ADD --------------------------------------------------------------------

    def _do_copy(self, stage: Stage, instruction: Instruction) -> None:
        self._copy(stage, instruction, unpack=False)

    def _do_add(self, stage: Stage, instruction: Instruction) -> None:
        self._copy(stage, instruction, unpack=True)

    def _copy(self, stage: Stage, instruction: Instruction, unpack: bool) -> None:
        keyword = instruction.keyword
        for flag in _BUILDKIT_FLAGS & instruction.flags.keys():
            raise BuildError(f"the --{flag} option requires BuildKit")
        env = stage.env()
        words = ins.path_list(instruction, env, self.escape)
        if len(words) < 2:
            raise BuildError(
                f"{keyword} requires at least two arguments, but only one was provided. "
                "Destination could not be determined."
            )
        *sources, dest_text = words
        dest = destination(dest_text, stage.config.get("WorkingDir") or "/")
        chown = variables.substitute(instruction.flag("chown"), env, self.escape)
        chmod = variables.substitute(instruction.flag("chmod"), env, self.escape)
        options = "".join(
            f"--{name}={value} " for name, value in (("chown", chown), ("chmod", chmod)) if value
        )
        source_from = variables.substitute(instruction.flag("from"), env, self.escape)
        if source_from:
            self._copy_from(stage, keyword, source_from, sources, dest, options, chown, chmod)
            return
        urls = [s for s in sources if unpack and s.startswith(("http://", "https://"))]
        local = [s for s in sources if s not in urls]
        found = resolve_sources(self.context, local, keyword) if local else []
        found += [download(url, self.work, keyword) for url in urls]
        digest = content_hash(found)
        kind = "multi" if len(found) > 1 else ("dir" if found[0].is_dir else "file")
        created_by = f"/bin/sh -c #(nop) {keyword} {options}{kind}:{digest} in {dest} "

        def write(root: str) -> None:
            copy_sources(root, found, dest, ownership(root, chown, chmod), unpack=unpack)

        self._files(stage, created_by, write, extra="", prefixed=True)

    def _copy_from(
        self,
        stage: Stage,
        keyword: str,
        source_from: str,
        sources: list[str],
        dest: str,
        options: str,
        chown: str,
        chmod: str,
    ) -> None:
        if keyword != "COPY":
            raise BuildError("ADD does not support --from; use COPY --from")
        earlier = self._stage_named(source_from)
        if earlier is None and source_from.isdigit() and int(source_from) < len(self.stages) - 1:
            earlier = self.stages[int(source_from)]
        image = earlier.image if earlier is not None else self._base_image(source_from)
        if image is None or not image.layer_dirs:
            raise BuildError(
                f"{keyword} failed: file not found: the stage {source_from} has no files"
            )
        created_by = (
            f"/bin/sh -c #(nop) {keyword} {options}--from={source_from} "
            f"{' '.join(sources)} in {dest} "
        )
        source_image = image

        def write(root: str) -> None:
            with self._mounted(source_image) as source_root:
                found = resolve_sources(source_root, sources, keyword)
                copy_sources(root, found, dest, ownership(root, chown, chmod))

        self._files(stage, created_by, write, extra=image.id, prefixed=True)

    # --- making images -----------------------------------------------------------------

    def _cached(self, stage: Stage, created_by: str, extra: str) -> bool:
        """Use a cached image for the step if there is one (unless --no-cache)."""
        if self.options.no_cache:
            return False
        hit = self.cache.lookup(stage.image_id, created_by, extra)
        if hit is None:
            return False
        self.say(" ---> Using cache\n")
        stage.image = hit
        stage.config = copy.deepcopy(hit.config.get("config") or {})
        return True

    def _advance(self, stage: Stage, image_id: str, created_by: str, extra: str) -> None:
        self.cache.record(stage.image_id, created_by, extra, image_id)
        stage.image = self.store.get(image_id)
        stage.config = copy.deepcopy(stage.image.config.get("config") or {})

    def _image_config(self, stage: Stage) -> dict[str, Any]:
        config = copy.deepcopy(stage.config)
        config.setdefault("Env", None)
        return config

    def _nop(self, stage: Stage, text: str) -> None:
        """A metadata-only step: a new config over the same layers."""
        created_by = f"/bin/sh -c #(nop)  {text}"
        if self._cached(stage, created_by, ""):
            return
        document = self._document(stage, created_by, [], empty_layer=True)
        image = self.store.load_layers_and_config(document, _no_new_layer)
        self._advance(stage, image.id, created_by, "")

    def _document(
        self, stage: Stage, created_by: str, new_diff_ids: list[str], empty_layer: bool
    ) -> bytes:
        parent = stage.image.config if stage.image is not None else {}
        document: dict[str, Any] = {key: parent[key] for key in _PLATFORM_FIELDS if key in parent}
        if not document:
            document = {"architecture": self.platform[1], "os": "linux"}
        created = now_rfc3339()
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if stage.author:
            document["author"] = stage.author
            entry["author"] = stage.author
        if empty_layer:
            entry["empty_layer"] = True
        diff_ids = list(stage.image.diff_ids) if stage.image is not None else []
        document.update(
            config=self._image_config(stage),
            created=created,
            history=[*(parent.get("history") or []), entry],
            rootfs={"type": "layers", "diff_ids": [*diff_ids, *new_diff_ids]},
        )
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    def _files(
        self,
        stage: Stage,
        text: str,
        write: Callable[[str], None],
        extra: str,
        empty_ok: bool = True,
        prefixed: bool = False,
    ) -> None:
        """A step that writes files: into a container's root, committed as a layer."""
        created_by = text if prefixed else f"/bin/sh -c #(nop) {text}"
        if self._cached(stage, created_by, extra):
            return
        if stage.image is None or not stage.image.layer_dirs:
            image_id = self._first_layer(stage, created_by, write, empty_ok)
            self._advance(stage, image_id, created_by, extra)
            return
        body = {
            "Image": stage.image.id,
            "Cmd": ["/bin/sh", "-c", f"#(nop) {text}"],
            "Entrypoint": [],
            "HostConfig": {"NetworkMode": "none"},
        }
        container = self.manager.create(body)
        try:
            with self.manager.root_mounted(container) as root:
                write(root)
            from agent.images.commit import commit_container

            image_id = commit_container(
                self.engine,
                container.id,
                pause=False,
                config_override=self._image_config(stage),
                created_by=created_by,
                author=stage.author,
                empty_layer_ok=empty_ok,
            )
        finally:
            try:
                self.manager.remove(container.id, force=True)
            except AgentError as error:
                log.warning("could not remove build container %s: %s", container.id, error)
        self._advance(stage, image_id, created_by, extra)

    def _first_layer(
        self, stage: Stage, created_by: str, write: Callable[[str], None], empty_ok: bool
    ) -> str:
        """Files on an image with no layers (FROM scratch): written to a directory and
        stored as the image's first layer."""
        staging = Path(tempfile.mkdtemp(dir=self.store.tmp_dir, prefix="build-"))
        try:
            root = staging / "root"
            root.mkdir()
            write(str(root))
            names = sorted(os.listdir(root))
            if not names and not empty_ok:
                document = self._document(stage, created_by, [], empty_layer=True)
                return self.store.load_layers_and_config(document, _no_new_layer).id
            with tempfile.TemporaryFile(dir=staging) as layer:
                with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in names:
                        tar.add(root / name, arcname=name)
                layer.seek(0)
                image = self.store.add_layer_image(
                    layer, lambda diff_id: self._document(stage, created_by, [diff_id], False)
                )
            return image.id
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _mounted(self, image: Image) -> Any:
        """A context manager: the image's files mounted read-only-by-use (a container root)."""
        import contextlib

        @contextlib.contextmanager
        def mounted() -> Any:
            container = self.manager.create(
                {"Image": image.id, "Cmd": ["/bin/true"], "HostConfig": {"NetworkMode": "none"}}
            )
            try:
                with self.manager.root_mounted(container) as root:
                    yield root
            finally:
                try:
                    self.manager.remove(container.id, force=True)
                except AgentError as error:
                    log.warning("could not remove build container %s: %s", container.id, error)

        return mounted()


def _no_new_layer(index: int) -> Any:
    raise AgentError(500, f"layer {index + 1} of the parent image vanished during the build")


def _alias(instruction: Instruction) -> str:
    words = instruction.args.split()
    return words[2].lower() if len(words) == 3 and words[1].lower() == "as" else ""


def _split_stages(dockerfile: Dockerfile) -> tuple[list[Instruction], list[list[Instruction]]]:
    """(the ARGs before the first FROM, the stages each starting with its FROM)."""
    prelude: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for instruction in dockerfile.instructions:
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        else:
            prelude.append(instruction)
    if not stages:
        raise BuildError("no build stage in current context: a Dockerfile needs a FROM")
    return prelude, stages
