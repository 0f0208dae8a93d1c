"""A headless ComfyUI session for tests, the demo and a command-line runner.

It drives the host's own machinery (node registry, ``execution.validate_prompt``,
``execution.PromptExecutor``) the way ``main.py``/``server.py`` do, minus the HTTP server,
with every folder the host reads or writes pointed at a temporary tree::

    with HeadlessHost() as host:
        result = host.run_prompt(load_api_workflow("workflows/demo_api.json"))
        assert result.ok, result.errors

Importing this module is cheap: the host (torch, comfy, nodes) is only imported when a
session starts, so engine tests that never start one stay host-free.

CLI: ``python -m devtools.host run|validate WORKFLOW_API.json [--base-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Self

try:
    from .host_path import host_path, import_host
except ImportError:  # run as a plain script: python devtools/host.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from devtools.host_path import host_path, import_host

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-zoodip"
MODEL_KINDS = ("checkpoints", "embeddings", "vae", "clip", "unet", "loras")
CLIENT_ID = "zoodip-headless"

log = logging.getLogger("zoodip.host")

# The host keeps its node registry, folder paths and interrupt flag in module globals, so
# only one session can be live in a process and the node set is only loaded once.
_ACTIVE: HeadlessHost | None = None
_NODES_LOADED_FROM: Path | None = None


class HostError(RuntimeError):
    """The host could not be set up (e.g. the pack failed to import)."""


class Message(NamedTuple):
    """One event the executor sent to the (fake) web client."""

    event: str | int  # ints are the host's BinaryEventTypes (previews)
    data: Any
    sid: str | None


@dataclass
class NodeOutput:
    """What the executor cached for one node: ``result`` is one list per output slot
    (each holding one value per list-batch item, as the host stores it); ``ui`` is the
    node's ``{"ui": ...}`` return, if any."""

    result: list[list[Any]] | None
    ui: dict[str, Any] | None


@dataclass
class PromptResult:
    ok: bool
    outputs: dict[str, NodeOutput] = field(default_factory=dict)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    interrupted: bool = False
    prompt_id: str = ""
    executed: list[str] = field(
        default_factory=list
    )  # nodes that ran (not served from cache)
    cached: list[str] = field(
        default_factory=list
    )  # nodes the executor took from its cache
    seconds: float = 0.0

    def events(self, name: str | int) -> list[Any]:
        """The data of every captured event called ``name`` (e.g. "progress"), in order."""
        return [m.data for m in self.messages if m.event == name]

    def value(self, node_id: str, slot: int = 0, index: int = 0) -> Any:
        """Output ``slot`` of ``node_id`` (item ``index`` of a list-batch)."""
        out = self.outputs[str(node_id)]
        if out.result is None:
            raise KeyError(f"node {node_id} has no cached result")
        return out.result[slot][index]


class _FakeServer:
    """Stands in for server.PromptServer: records every event instead of sending it."""

    def __init__(self, on_message: Callable[[Message], None]) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.number = 0
        # Advertise what the current front end advertises, so previews travel the same path.
        self.sockets_metadata: dict[str, dict[str, Any]] = {
            CLIENT_ID: {"feature_flags": {"supports_preview_metadata": True}}
        }
        self._on_message = on_message
        try:  # packs may register HTTP routes on PromptServer.instance.routes at import
            from aiohttp import web

            self.routes: Any = web.RouteTableDef()
        except ImportError:  # pragma: no cover - aiohttp is a host requirement
            self.routes = None

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        self._on_message(Message(event, data, sid))

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(
        self, text: str | bytes, node_id: str, sid: str | None = None
    ) -> None:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8", "replace")
        self.send_sync(
            "progress_text", {"node": node_id, "text": text}, sid or self.client_id
        )

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": {"exec_info": {"queue_remaining": 0}}})


class _LogCapture(logging.Handler):
    """Collects log records: load_custom_node reports import failures only by logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


class HeadlessHost:
    """A live ComfyUI host with the pack loaded, all folders in a temp tree.

    ``cache`` picks the executor cache like the app's flags: "classic" (default, like
    plain ``main.py``), "lru" (``--cache-lru N``, with ``cache_size``) or "none"
    (``--cache-none``). ``base_dir`` given: used and kept; else a temp dir removed on close
    (unless ``keep=True``).
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        pack_root: str | os.PathLike[str] = PACK_ROOT,
        load_pack: bool = True,
        cache: str = "classic",
        cache_size: int = 0,
        keep: bool = False,
    ) -> None:
        self._own_base = base_dir is None
        self.base = (
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="zoodip-host-"))
        )
        self.base = self.base.resolve()
        self.pack_root = Path(pack_root).resolve()
        self.load_pack = load_pack
        self.cache = cache
        self.cache_size = cache_size
        self.keep = keep
        self.host_root: Path | None = None
        self.pack_module: ModuleType | None = None
        self.core_import_failures: list[str] = []
        self._messages: list[Message] = []
        self._listener: Callable[[Message], None] | None = None
        self.server = _FakeServer(self._record)
        self._executor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    # -- folders -------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base / "temp"

    @property
    def user_dir(self) -> Path:
        return self.base / "user"

    @property
    def pack_link(self) -> Path:
        return self.base / "custom_nodes" / PACK_NAME

    def model_dir(self, kind: str) -> Path:
        """Where a model of ``kind`` (checkpoints, embeddings, vae, clip, unet, loras) goes."""
        return self.models_dir / kind

    def output_files(self) -> list[Path]:
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    # -- life cycle ----------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Self:
        global _ACTIVE, _NODES_LOADED_FROM
        if self._started:
            return self
        if _ACTIVE is not None or _NODES_LOADED_FROM is not None:
            self._discard_base()
        if _ACTIVE is not None:
            raise HostError(
                "another HeadlessHost is live in this process; the host's state is global"
            )
        if _NODES_LOADED_FROM is not None:
            # A second session would run against a pack imported from the first one's
            # (possibly deleted) tree: refuse rather than test stale code.
            raise HostError(
                f"the host was already initialised in this process (pack from {_NODES_LOADED_FROM}); "
                "use one HeadlessHost per process (tests share a session fixture)"
            )
        _ACTIVE = self
        try:
            self._make_tree()
            self.host_root = self._import_host()
            self._point_folders()
            self._loop = asyncio.new_event_loop()
            # From here on the host's globals are touched: no second try in this process.
            _NODES_LOADED_FROM = self.pack_link
            self._loop.run_until_complete(self._init_nodes())
            import comfy.utils

            # Like main.hijack_progress: ProgressBar updates become "progress" events and
            # are where Cancel is honoured.
            comfy.utils.set_progress_bar_global_hook(self._progress_hook)
            self._executor = self._new_executor()
        except BaseException:
            _ACTIVE = None
            self._close_loop()
            self._discard_base()  # __exit__ won't run when __enter__ raised
            raise
        self._started = True
        return self

    def close(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
            import comfy.utils

            comfy.utils.set_progress_bar_global_hook(None)
        self._executor = None
        self._close_loop()
        self._started = False
        self._discard_base()

    def _discard_base(self) -> None:
        if self._own_base and not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _make_tree(self) -> None:
        for kind in MODEL_KINDS:
            self.model_dir(kind).mkdir(parents=True, exist_ok=True)
        for d in (
            self.input_dir,
            self.output_dir,
            self.temp_dir,
            self.user_dir,
            self.pack_link.parent,
        ):
            d.mkdir(parents=True, exist_ok=True)
        if self.load_pack:
            # The app imports packs from <base>/custom_nodes/<name>; a fixed link name keeps
            # the pack's module name (RELATIVE_PYTHON_MODULE) the same as in a real install.
            if self.pack_link.is_symlink() or self.pack_link.exists():
                if self.pack_link.resolve() != self.pack_root:
                    raise HostError(
                        f"{self.pack_link} exists and is not a link to {self.pack_root}"
                    )
            else:
                self.pack_link.symlink_to(self.pack_root, target_is_directory=True)

    def _import_host(self) -> Path:
        root = import_host()
        # The pack root holds a nodes/ package and may be on sys.path (tests, python -m):
        # the host's nodes.py must win the name "nodes".
        root_s = str(root)
        while root_s in sys.path:
            sys.path.remove(root_s)
        sys.path.insert(0, root_s)
        loaded = sys.modules.get("nodes")
        if (
            loaded is not None
            and Path(getattr(loaded, "__file__", "") or "").resolve().parent
            != root.resolve()
        ):
            raise HostError(
                f"'nodes' was imported from {loaded.__file__}, not from the host at {root}"
            )
        if "folder_paths" not in sys.modules:
            from comfy.cli_args import args

            # folder_paths computes its defaults (and mkdirs input/) at import: aim it at
            # our tree so nothing is ever created in the host's own directory.
            args.base_directory = str(self.base)
        # nodes.py puts <host>/comfy first on sys.path, after which "utils" would mean
        # comfy/utils.py; main.py imports the host's utils package before nodes, so do we.
        import utils

        if (
            Path(getattr(utils, "__file__", "") or "").resolve().parent
            != root.resolve() / "utils"
        ):
            raise HostError(
                f"'utils' was imported from {utils.__file__}, not the host's utils package"
            )
        return root

    def _point_folders(self) -> None:
        import folder_paths

        old_base = os.path.abspath(
            getattr(folder_paths, "base_path", os.path.dirname(folder_paths.__file__))
        )
        for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
            new_paths: list[str] = []
            for p in paths:
                rel = os.path.relpath(os.path.abspath(p), old_base)
                if rel.startswith(".."):
                    continue  # outside the host tree (extra paths): never seen by tests
                new = os.path.join(str(self.base), rel)
                if new not in new_paths:
                    new_paths.append(new)
            folder_paths.folder_names_and_paths[name] = (new_paths, exts)
        folder_paths.base_path = str(self.base)
        folder_paths.models_dir = str(self.models_dir)
        folder_paths.set_output_directory(str(self.output_dir))
        folder_paths.set_temp_directory(str(self.temp_dir))
        folder_paths.set_input_directory(str(self.input_dir))
        folder_paths.set_user_directory(str(self.user_dir))
        # main.apply_custom_paths also lists output/<kind> so saved models can be reloaded.
        for kind in ("checkpoints", "clip", "vae", "diffusion_models", "loras"):
            folder_paths.add_model_folder_path(kind, str(self.output_dir / kind))
        folder_paths.filename_list_cache.clear()

    async def _init_nodes(self) -> None:
        import nodes

        try:
            import hook_breaker_ac10a0 as hook_breaker  # stops packs from patching core hooks
        except ImportError:  # newer/older hosts may not have it
            hook_breaker = None
        if hook_breaker is not None:
            hook_breaker.save_functions()
        try:
            failed = await nodes.init_extra_nodes(
                init_custom_nodes=False, init_api_nodes=False
            )
            self.core_import_failures = [str(f) for f in (failed or [])]
            self._install_prompt_server()
            if self.load_pack:
                await self._load_pack(nodes)
        finally:
            if hook_breaker is not None:
                hook_breaker.restore_functions()

    def _install_prompt_server(self) -> None:
        # Nodes reach the web client through server.PromptServer.instance (core ones too,
        # e.g. GetImageSize's progress text); without a real server it would be missing.
        try:
            import server
        except ImportError:  # pragma: no cover
            return
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = self.server

    async def _load_pack(self, nodes: ModuleType) -> None:
        base_names = set(nodes.NODE_CLASS_MAPPINGS)
        capture = _LogCapture()
        root_logger = logging.getLogger()
        old_level = root_logger.level
        root_logger.addHandler(capture)
        if root_logger.getEffectiveLevel() > logging.WARNING:
            # The traceback is logged as a warning: don't let the level drop it.
            root_logger.setLevel(logging.WARNING)
        try:
            # ignore=core names, as the app does: a pack can't replace core nodes.
            ok = await nodes.load_custom_node(
                str(self.pack_link), ignore=base_names, module_parent="custom_nodes"
            )
        finally:
            root_logger.removeHandler(capture)
            root_logger.setLevel(old_level)
        if not ok:
            raise HostError(
                f"the host failed to load the pack from {self.pack_link}:\n{capture.text()}"
            )
        # load_custom_node registers the module under its path with dots escaped.
        sys_name = str(self.pack_link).replace(".", "_x_")
        self.pack_module = sys.modules.get(sys_name)
        if self.pack_module is None:
            raise HostError(
                f"pack loaded but module {sys_name!r} is not in sys.modules"
            )

    def _new_executor(self) -> Any:
        import execution

        kinds = {
            "classic": execution.CacheType.CLASSIC,
            "lru": execution.CacheType.LRU,
            "none": execution.CacheType.DEPENDENCY_AWARE,
        }
        if self.cache not in kinds:
            raise ValueError(
                f"cache must be one of {sorted(kinds)}, not {self.cache!r}"
            )
        params = inspect.signature(execution.PromptExecutor).parameters
        kwargs: dict[str, Any] = {"cache_type": kinds[self.cache]}
        # v0.3.64 takes cache_size; later hosts take cache_args={"lru": N, ...}.
        if "cache_size" in params:
            kwargs["cache_size"] = self.cache_size
        elif "cache_args" in params:
            kwargs["cache_args"] = {"lru": self.cache_size, "ram": 0}
        return execution.PromptExecutor(self.server, **kwargs)

    # -- events --------------------------------------------------------------------
    def _record(self, message: Message) -> None:
        self._messages.append(message)
        if self._listener is not None:
            self._listener(message)

    def _progress_hook(
        self,
        value: float,
        total: float,
        preview_image: Any,
        prompt_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        import comfy.model_management
        from comfy_api import feature_flags
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        if ctx is not None:
            prompt_id = prompt_id or ctx.prompt_id
            node_id = node_id or ctx.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        prompt_id = prompt_id or self.server.last_prompt_id
        node_id = node_id or self.server.last_node_id
        get_progress_state().update_progress(node_id, value, total, preview_image)
        self.server.send_sync(
            "progress",
            {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
            self.server.client_id,
        )
        if preview_image is not None and not feature_flags.supports_feature(
            self.server.sockets_metadata,
            self.server.client_id,
            "supports_preview_metadata",
        ):
            from protocol import BinaryEventTypes

            self.server.send_sync(
                BinaryEventTypes.UNENCODED_PREVIEW_IMAGE,
                preview_image,
                self.server.client_id,
            )

    # -- prompts -------------------------------------------------------------------
    def _require_started(self) -> None:
        if not self._started or self._loop is None:
            raise HostError(
                "HeadlessHost is not started (use it as a context manager or call start())"
            )

    async def _validate(
        self, prompt: dict[str, Any], prompt_id: str
    ) -> tuple[bool, list[dict[str, Any]], list[str]]:
        import execution

        fn = execution.validate_prompt
        n_params = len(inspect.signature(fn).parameters)
        # v0.3.64: (prompt_id, prompt, partial_execution_list); older hosts: (prompt).
        res = fn(prompt_id, prompt, None) if n_params >= 3 else fn(prompt)
        if inspect.isawaitable(res):
            res = await res
        valid, error, good_outputs, node_errors = res[0], res[1], list(res[2]), res[3]
        errors: list[dict[str, Any]] = []
        for node_id, info in (node_errors or {}).items():
            for reason in info.get("errors", []):
                errors.append(
                    {
                        "node_id": str(node_id),
                        "class_type": info.get("class_type"),
                        **reason,
                    }
                )
        if not valid and not errors and error:
            errors.append({"node_id": None, "class_type": None, **error})
        return bool(valid), errors, good_outputs

    def validate(self, prompt: dict[str, Any]) -> list[dict[str, Any]]:
        """The host's validation errors for an API prompt (empty if it would run).

        Each error has ``node_id``, ``class_type``, ``type``, ``message``, ``details``.
        """
        self._require_started()
        assert self._loop is not None
        prompt = _as_json(prompt)
        _valid, errors, _outputs = self._loop.run_until_complete(
            self._validate(prompt, str(uuid.uuid4()))
        )
        return errors

    def run_prompt(
        self,
        prompt: dict[str, Any],
        *,
        fresh_cache: bool = False,
        prompt_id: str | None = None,
        extra_data: dict[str, Any] | None = None,
        on_message: Callable[[Message], None] | None = None,
    ) -> PromptResult:
        """Validate then execute an API prompt, like POST /prompt followed by the worker.

        Nothing runs if validation fails. The executor's cache persists across calls (as
        in the app); ``fresh_cache=True`` starts from an empty one. ``on_message`` sees each
        event as it is sent (e.g. to call :meth:`interrupt` at some progress step).
        ``ok`` is True only if the executor reported success and no error event was seen.
        """
        self._require_started()
        assert self._loop is not None
        prompt = _as_json(
            prompt
        )  # the app gets prompts as JSON: same types, and no aliasing
        prompt_id = prompt_id or str(uuid.uuid4())
        start = time.perf_counter()
        self._messages = []
        self._listener = on_message
        try:
            valid, errors, good_outputs = self._loop.run_until_complete(
                self._validate(prompt, prompt_id)
            )
            if not valid:
                return PromptResult(
                    ok=False,
                    errors=errors,
                    messages=self._messages,
                    prompt_id=prompt_id,
                    seconds=time.perf_counter() - start,
                )
            if fresh_cache:
                self._executor.reset()
            data = {"client_id": CLIENT_ID, **(extra_data or {})}
            self.server.last_prompt_id = prompt_id
            self._loop.run_until_complete(
                self._executor.execute_async(prompt, prompt_id, data, good_outputs)
            )
            # The app's worker announces the end of a prompt this way; front ends rely on it.
            if self.server.client_id is not None:
                self.server.send_sync(
                    "executing",
                    {"node": None, "prompt_id": prompt_id},
                    self.server.client_id,
                )
            return self._collect(prompt, prompt_id, errors, start)
        finally:
            self._listener = None

    def _collect(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        errors: list[dict[str, Any]],
        start: float,
    ) -> PromptResult:
        ex = self._executor
        messages = self._messages
        names = [m.event for m in messages]
        interrupted = "execution_interrupted" in names
        for m in messages:
            if m.event == "execution_error":
                d = m.data
                errors.append(
                    {
                        "node_id": d.get("node_id"),
                        "class_type": d.get("node_type"),
                        "type": "execution_error",
                        # The host appends "\n<tips>" (empty except for OOM).
                        "message": str(d.get("exception_message", "")).rstrip(),
                        "exception_type": d.get("exception_type"),
                        "traceback": d.get("traceback", []),
                    }
                )
        # Judge by events, not executor.success: v0.3.64 never resets success between
        # prompts, so it stays False after a failure when the next prompt is all cached.
        ok = "execution_success" in names and not errors and not interrupted
        history = getattr(ex, "history_result", None) or {}
        ui = {str(k): v for k, v in (history.get("outputs") or {}).items()}
        outputs: dict[str, NodeOutput] = {}
        for node_id in prompt:
            value = _cache_get(ex.caches.outputs, node_id)
            # Newer hosts wrap cache values (CacheEntry with .outputs/.ui).
            result = getattr(value, "outputs", value)
            ui_entry = ui.get(node_id)
            if ui_entry is None:
                cached_ui = _cache_get(ex.caches.ui, node_id)
                ui_entry = (
                    cached_ui.get("output") if isinstance(cached_ui, dict) else None
                )
            if result is not None or ui_entry is not None:
                outputs[node_id] = NodeOutput(result=result, ui=ui_entry)
        executed = [
            m.data["node"]
            for m in messages
            if m.event == "executing" and m.data.get("node") is not None
        ]
        cached = next(
            (
                list(m.data.get("nodes", []))
                for m in messages
                if m.event == "execution_cached"
            ),
            [],
        )
        return PromptResult(
            ok=ok,
            outputs=outputs,
            ui=ui,
            errors=errors,
            messages=messages,
            interrupted=interrupted,
            prompt_id=prompt_id,
            executed=list(dict.fromkeys(executed)),
            cached=cached,
            seconds=time.perf_counter() - start,
        )

    def reset_cache(self) -> None:
        """Drop everything the executor cached (like the app's "free memory" flag)."""
        self._require_started()
        self._executor.reset()

    def interrupt(self) -> None:
        """Press Cancel. Only meaningful while a prompt runs: execute_async clears the flag
        when it starts. Safe to call from another thread or from an on_message callback."""
        import comfy.model_management

        comfy.model_management.interrupt_current_processing(True)

    @property
    def node_class_mappings(self) -> dict[str, type]:
        import nodes

        return nodes.NODE_CLASS_MAPPINGS


def _cache_get(cache: Any, node_id: str) -> Any:
    try:
        return cache.get(node_id)
    except (
        AttributeError,
        KeyError,
        TypeError,
    ):  # cache not bound to this node: no value
        return None


def _as_json(prompt: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(prompt, dict):
        raise TypeError(
            f"an API prompt is a dict of node id -> node, not {type(prompt).__name__}"
        )
    return json.loads(json.dumps(prompt))


def load_api_workflow(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an API-format prompt (node id -> {class_type, inputs}) from a JSON file.

    Also accepts the ``{"prompt": {...}}`` body that POST /prompt takes. A UI-format
    workflow (nodes + links) is rejected: the executor can't run it.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if (
        isinstance(data, dict)
        and isinstance(data.get("prompt"), dict)
        and "class_type" not in data["prompt"]
    ):
        data = data["prompt"]
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise ValueError(
            f"{path}: this is a UI-format workflow; export it with 'Save (API)'"
        )
    items = data.items() if isinstance(data, dict) else [("<top level>", data)]
    bad = [k for k, v in items if not (isinstance(v, dict) and "class_type" in v)]
    if bad or not data:
        raise ValueError(
            f"{path}: not an API-format prompt (entries without class_type: {bad[:5]})"
        )
    return {str(k): v for k, v in data.items()}


def _summary(result: PromptResult, host: HeadlessHost) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "executed": result.executed,
        "cached": result.cached,
        "errors": [
            {
                k: e.get(k)
                for k in ("node_id", "class_type", "type", "message", "details")
            }
            for e in result.errors
        ],
        "ui": result.ui,
        "output_files": [str(p) for p in host.output_files()],
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run or validate an API workflow in a throwaway headless host."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.host", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("run", "validate", "where"))
    parser.add_argument("workflow", nargs="?", help="API-format workflow JSON")
    parser.add_argument(
        "--base-dir",
        help="keep models/input/output/temp here (default: a temp dir, removed)",
    )
    parser.add_argument("--no-pack", action="store_true", help="core nodes only")
    parser.add_argument("-v", "--verbose", action="store_true")
    opts = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if opts.verbose else logging.WARNING, stream=sys.stderr
    )
    if opts.command == "where":
        print(host_path())
        return 0
    if not opts.workflow:
        parser.error("a workflow file is required")
    prompt = load_api_workflow(opts.workflow)
    with HeadlessHost(
        opts.base_dir, load_pack=not opts.no_pack, keep=opts.base_dir is not None
    ) as host:
        if opts.command == "validate":
            errors = host.validate(prompt)
            print(
                json.dumps({"ok": not errors, "errors": errors}, indent=2, default=str)
            )
            return 0 if not errors else 1
        result = host.run_prompt(prompt)
        print(json.dumps(_summary(result, host), indent=2, default=str))
        return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
