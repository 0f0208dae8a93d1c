"""``python -m zoodip train`` (or ``python cli.py train``): train a token headless, inside ComfyUI.

The run is the one the ZOODiP Train Token node does: this script finds ComfyUI, sets its folders
up the way its main.py does (minus the server), loads the pack with the host's own
``nodes.load_custom_node`` (as the app loads it), and hands over to the loaded pack's
``nodes/cli.py``, which loads the checkpoint with ``CheckpointLoaderSimple``, trains with
``nodes/training.py`` and saves with the Save Embedding node's code. The options and the checks
that need no host are the engine's ``zoodip/cli.py``; they run before ComfyUI is imported.

This file is the adapter side of the command line: the engine (``zoodip/``) never imports it;
``zoodip/__main__.py`` runs it by path.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parent
if str(PACK_ROOT) not in sys.path:  # ``python /path/to/cli.py``: the engine is imported from here
    sys.path.insert(0, str(PACK_ROOT))

from zoodip.cli import PROG, UsageError, build_parser, check_options  # noqa: E402


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1."""


# -- finding the host ---------------------------------------------------------------------------

def _pack_dirs() -> list[Path]:
    """This pack's folder as the user may see it: through a symlink in custom_nodes/ too."""
    dirs = [Path(__file__).absolute().parent, PACK_ROOT]
    # ``cd ComfyUI/custom_nodes/<pack> && python -m zoodip``: the shell's logical $PWD keeps a
    # symlinked pack's custom_nodes path, which os.getcwd() (and so __file__) resolve away.
    pwd = os.environ.get("PWD")
    if pwd:
        try:
            if Path(pwd).resolve() == PACK_ROOT:
                dirs.insert(0, Path(pwd))
        except OSError:
            pass
    return dirs


def comfyui_candidates(explicit: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """Where to look for ComfyUI, in order: --comfyui, $COMFYUI_PATH, the ComfyUI whose
    custom_nodes/ holds this pack, the development layout ``<pack>/../shared/comfyui``."""
    out: list[tuple[str, Path]] = []
    if explicit:
        return [("--comfyui", Path(explicit).expanduser())]
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return [("$COMFYUI_PATH", Path(env).expanduser())]
    for pack in _pack_dirs():
        if pack.parent.name == "custom_nodes":
            out.append(("the ComfyUI holding this pack", pack.parent.parent))
    out.append(("../shared/comfyui", PACK_ROOT.parent / "shared" / "comfyui"))
    return out


def find_comfyui(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ComfyUI root (the folder with main.py and nodes.py), or CLIError saying where we looked."""
    tried = []
    for how, path in comfyui_candidates(explicit):
        if (path / "nodes.py").is_file() and (path / "folder_paths.py").is_file():
            return path.resolve()
        tried.append(f"{how}: {path}")
    raise CLIError(
        "no ComfyUI found (looked at " + "; ".join(tried) + "). Pass --comfyui PATH (the folder "
        "with main.py) or set COMFYUI_PATH."
    )


# -- starting the host --------------------------------------------------------------------------

def start_host(root: Path, opts: argparse.Namespace) -> ModuleType:
    """Set ComfyUI's folders up from ``root`` the way main.py does (minus the server), without
    importing torch or the models yet; return ``folder_paths``."""
    root_s = str(root)
    # The pack root is on sys.path (python -m) and has its own nodes/ package: the host's
    # nodes.py must win the name.
    while root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    import comfy.options  # noqa: F401  -- first: keeps comfy.cli_args from parsing our argv
    from comfy.cli_args import args

    if opts.cpu:
        args.cpu = True  # read once, when comfy.model_management is imported
    if opts.base_directory:
        args.base_directory = os.path.abspath(opts.base_directory)  # folder_paths reads it at import
    # main.py imports the host's utils package before nodes (nodes.py puts comfy/ on sys.path,
    # where a utils.py would shadow it).
    import folder_paths
    import utils.extra_config

    extra = root / "extra_model_paths.yaml"
    if extra.is_file():  # as main.py: the user's extra model folders are where the app looks too
        utils.extra_config.load_extra_path_config(str(extra))
    if opts.output_dir is not None:
        out = opts.output_dir.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path("embeddings", str(out), is_default=True)
    return folder_paths


def import_host_nodes(root: Path) -> ModuleType:
    import nodes

    loaded_from = Path(getattr(nodes, "__file__", "") or "").resolve().parent
    if loaded_from != root:
        raise CLIError(f"'nodes' was imported from {loaded_from}, not from ComfyUI at {root}")
    return nodes


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def load_pack(nodes: ModuleType) -> ModuleType:
    """Load this pack with the host's loader, as the app does; return the loaded pack module."""
    capture = _Capture()
    root_logger = logging.getLogger()
    root_logger.addHandler(capture)
    try:
        ok = asyncio.run(
            nodes.load_custom_node(str(PACK_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes")
        )
    finally:
        root_logger.removeHandler(capture)
    name = str(PACK_ROOT).replace(".", "_x_")  # how load_custom_node names a pack module
    if not ok or name not in sys.modules:
        raise CLIError("ComfyUI could not load the pack:\n" + "\n".join(capture.lines))
    return sys.modules[name]


# -- the command --------------------------------------------------------------------------------

def train(opts: argparse.Namespace) -> int:
    check_options(opts)
    root = find_comfyui(opts.comfyui)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"ComfyUI: {root}")
    folder_paths = start_host(root, opts)
    # Where Save Embedding writes: the first embeddings folder. Refuse an existing file now,
    # before torch and the model are loaded, not after hours of training.
    dirs = folder_paths.get_folder_paths("embeddings")
    if not dirs:
        raise CLIError("ComfyUI has no embeddings folder configured (models/embeddings)")
    target = Path(dirs[0]) / f"{opts.token}.safetensors"
    if target.exists() and not opts.overwrite:
        raise CLIError(f"{target} already exists: choose another --token, or pass --overwrite to replace it")
    pack = load_pack(import_host_nodes(root))
    runner = importlib.import_module(f"{pack.__name__}.nodes.cli")  # the pack as the host loaded it
    return runner.train(opts, target, say)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(opts, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(message)s")
    try:
        return train(opts)  # the only command (the subparser is required)
    except UsageError as e:
        print(f"{PROG} {opts.command}: error: {e}", file=sys.stderr)
        return 2
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    # the pack's refusals (bad photos, model family...), a file that cannot be read or written; an error that
    # stops training is printed by the runner, after it saved the token
    except (ValueError, OSError) as e:
        if opts.verbose:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before or after training (during it, the runner saves and returns 130)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
