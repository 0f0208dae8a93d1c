"""``python -m zoodip``: train a token from the command line, headless, inside ComfyUI.

The run is the one the ZOODiP Train Token node does: the pack is loaded by the host's own
``nodes.load_custom_node`` (as the app loads it), the checkpoint by the host's
``CheckpointLoaderSimple``, and the training is the pack's ``nodes/training.py`` (``prepare`` /
``train``); the file is written by the Save Embedding node's code into the host's embeddings
folder. Only the graph and the web server are left out.

This module imports nothing from ComfyUI at import time (``import zoodip`` stays host-free);
the host is imported inside :func:`train`, after the arguments are checked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

PACK_ROOT = Path(__file__).resolve().parent.parent
PROG = "python -m zoodip"
log = logging.getLogger("zoodip.cli")


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1."""


class UsageError(CLIError):
    """A bad option value, found before ComfyUI is imported; exit status 2, like argparse's."""


# -- finding the host ---------------------------------------------------------------------------

def _pack_dirs() -> list[Path]:
    """This pack's folder as the user may see it: through a symlink in custom_nodes/ too."""
    dirs = [Path(__file__).absolute().parent.parent, PACK_ROOT]
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


# -- arguments ----------------------------------------------------------------------------------

DESCRIPTION = """\
Learn a new token (textual inversion) from a few photos with forward passes only (ZOODiP,
arXiv 2503.14868), headless, with the same code the ZOODiP Train Token node runs. The result is
written where the app writes it, models/embeddings/<token>.safetensors, so any prompt in ComfyUI
can use it as embedding:<token>. Defaults are the paper's (PUTS 500-900 and Subspace Gradient
tau 128 / nu 1e-3 on, as in the shipped workflow).
"""

EPILOG = """\
examples:
  cd ComfyUI/custom_nodes/comfyui-zoodip
  python -m zoodip train --checkpoint v1-5-pruned-emaonly-fp16.safetensors \\
      --images ~/photos/my-dog --token my-dog --init-word dog
  python -m zoodip train --checkpoint /models/sd15.safetensors --images ./dog --token my-dog \\
      --steps 2000 --comfyui ~/ComfyUI --resume ~/ComfyUI/models/embeddings/my-dog.safetensors --overwrite

Ctrl-C stops within one step and saves what was learned so far to
models/embeddings/zoodip-runs/<token>/step-<k>.safetensors (with its training state): pass that
file to --resume to continue exactly where it stopped. Exit status: 0 saved, 1 refused or failed,
2 bad arguments, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    from .settings import SETTINGS, add_arguments

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ZOODiP for ComfyUI: forward-only textual inversion from the command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "train",
        help="train a token and save it to models/embeddings",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    need = p.add_argument_group("what to train")
    need.add_argument("--checkpoint", required=True, metavar="FILE",
                      help="an SD1.x, SD2.x or SDXL checkpoint: a file path, or a name in ComfyUI's models/checkpoints "
                           "(as Load Checkpoint lists it)")
    need.add_argument("--images", required=True, metavar="DIR", type=Path,
                      help="a folder with 3-5 photos of the subject (png, jpg, webp...); each is EXIF-rotated, center-cropped and resized")
    # every training option below is declared once, in zoodip/settings.py (SETTINGS), like the node's inputs
    add_arguments(need, ["token_name"], required=["token_name"])

    t = p.add_argument_group("training (defaults are the paper's)")
    add_arguments(t, ["steps", "init_word", "num_vectors", "learning_rate", "queries", "perturbation", "two_sided",
                      "query_batch", "seed"])
    puts = t.add_mutually_exclusive_group()
    t_min, t_max = SETTINGS["t_min"], SETTINGS["t_max"]
    puts.add_argument("--puts", nargs=2, type=int, default=(t_min.default, t_max.default), metavar=("T_MIN", "T_MAX"),
                      help=f"PUTS: draw training timesteps from [T_MIN, T_MAX) of the model's 1000 (default: "
                           f"{t_min.default} {t_max.default}; T_MIN {t_min.range_text()}, T_MAX {t_max.range_text()}; "
                           f"{t_max.paper_text()} for T_MAX)")
    puts.add_argument("--no-puts", action="store_true",
                      help="no PUTS: timesteps uniform over all of them")
    sg = t.add_mutually_exclusive_group()
    add_arguments(sg, ["tau"])
    sg.add_argument("--no-subspace", action="store_true",
                    help="no Subspace Gradient: use the raw zeroth-order estimates")
    add_arguments(t, ["nu"])
    t.add_argument("--templates", type=Path, metavar="FILE",
                   help="prompt templates, one per line with {token} once (default: the 27 standard object templates)")
    add_arguments(t, ["resolution"])
    t.add_argument("--resume", type=Path, metavar="FILE",
                   help="continue from an embedding file; with its .zoodip-state beside it (Save Embedding, Ctrl-C and "
                        "--save-every write one) the run continues exactly from its step")
    add_arguments(t, ["save_every"])

    o = p.add_argument_group("where")
    o.add_argument("--overwrite", action="store_true",
                   help="replace an existing <token>.safetensors; without it an existing file stops the run before any work")
    o.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="write the embedding (and snapshots) to DIR instead of ComfyUI's embeddings folder")
    o.add_argument("--comfyui", metavar="PATH",
                   help="the ComfyUI folder (default: $COMFYUI_PATH, else the ComfyUI whose custom_nodes holds this pack)")
    o.add_argument("--base-directory", metavar="DIR",
                   help="like ComfyUI's --base-directory: models, input, output, temp and user folders under DIR")
    o.add_argument("--cpu", action="store_true", help="run on the CPU, like ComfyUI's --cpu (needed wherever ComfyUI itself needs it, e.g. without a GPU)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no messages; only the saved file's path is printed")
    o.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's log")
    return parser


# the TrainSettings fields that are command-line options, each under its SETTINGS flag
_TRAIN_OPTIONS = ("token_name", "init_word", "num_vectors", "steps", "learning_rate", "queries", "perturbation", "seed",
                  "two_sided", "query_batch")


def settings_kwargs(opts: argparse.Namespace) -> dict[str, Any]:
    """The TrainSettings fields from the options (PUTS/subspace as plain tuples, filled in later)."""
    from .settings import dest

    templates = ""
    if opts.templates is not None:
        try:
            templates = opts.templates.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise UsageError(f"cannot read --templates {opts.templates}: {e}") from None
    return {**{name: getattr(opts, dest(name)) for name in _TRAIN_OPTIONS}, "prompt_templates": templates}


def check_options(opts: argparse.Namespace) -> None:
    """Everything that can be refused without the host, refused before it is imported."""
    from .settings import PUTSConfig, SubspaceConfig, TrainSettings

    s = TrainSettings(**settings_kwargs(opts))
    s.puts = None if opts.no_puts else PUTSConfig(*opts.puts)
    s.subspace = None if opts.no_subspace else SubspaceConfig(opts.tau, opts.nu)
    try:
        s.validate()
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    if not opts.images.is_dir():
        raise UsageError(f"--images {opts.images} is not a folder")
    if opts.resume is not None and not opts.resume.is_file():
        raise UsageError(f"--resume {opts.resume} is not a file")


# -- the host -----------------------------------------------------------------------------------

def _start_host(root: Path, opts: argparse.Namespace) -> ModuleType:
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


def _import_nodes(root: Path) -> ModuleType:
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


def _load_pack(nodes: ModuleType) -> str:
    """Load this pack with the host's loader, as the app does; return its module name."""
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
    return name


def _pack(name: str, sub: str) -> ModuleType:
    """A submodule of the pack as the host loaded it (``nodes.training``, ``zoodip.settings``...)."""
    import importlib

    return importlib.import_module(f"{name}.{sub}")


def _checkpoint_name(folder_paths: ModuleType, checkpoint: str) -> str:
    """The name CheckpointLoaderSimple takes: a file path's folder is put first in the list."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        folder_paths.add_model_folder_path("checkpoints", str(path.resolve().parent), is_default=True)
        return path.name
    if folder_paths.get_full_path("checkpoints", checkpoint) is None:
        names = folder_paths.get_filename_list("checkpoints")
        listed = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "none"
        raise CLIError(
            f"--checkpoint {checkpoint!r} is neither a file nor in ComfyUI's checkpoints folders "
            f"({', '.join(folder_paths.get_folder_paths('checkpoints'))}); found there: {listed}"
        )
    return checkpoint


class _Progress:
    """tqdm on stderr when it is there (ComfyUI requires it), else a line every few seconds."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.total, self.enabled, self.last = total, enabled, 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True,
                                desc="ZOODiP")
            except ImportError:
                pass

    def step(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled and (time.monotonic() - self.last > 5 or step == self.total):
            self.last = time.monotonic()
            print(f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} it/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(opts: argparse.Namespace) -> int:
    check_options(opts)
    root = find_comfyui(opts.comfyui)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"ComfyUI: {root}")
    folder_paths = _start_host(root, opts)
    # Where Save Embedding writes: the first embeddings folder. Refuse an existing file now,
    # before torch and the model are loaded, not after hours of training.
    dirs = folder_paths.get_folder_paths("embeddings")
    if not dirs:
        raise CLIError("ComfyUI has no embeddings folder configured (models/embeddings)")
    target = Path(dirs[0]) / f"{opts.token}.safetensors"
    if target.exists() and not opts.overwrite:
        raise CLIError(f"{target} already exists: choose another --token, or pass --overwrite to replace it")

    nodes = _import_nodes(root)
    name = _load_pack(nodes)
    common = _pack(name, "nodes.common")
    training = _pack(name, "nodes.training")
    train_node = _pack(name, "nodes.train")
    emb_nodes = _pack(name, "nodes.embeddings")
    host = _pack(name, "nodes.host")
    settings_mod = _pack(name, "zoodip.settings")
    emb_io = _pack(name, "zoodip.embedding")
    images_mod = _pack(name, "zoodip.images")
    if common.embedding_path(opts.token) != target:  # the node's own rule must agree
        raise CLIError(f"internal: the pack would save to {common.embedding_path(opts.token)}, not {target}")

    settings = settings_mod.TrainSettings(**settings_kwargs(opts))
    settings.puts = None if opts.no_puts else settings_mod.PUTSConfig(*opts.puts)
    settings.subspace = None if opts.no_subspace else settings_mod.SubspaceConfig(opts.tau, opts.nu)

    images, names = images_mod.load_folder(opts.images, opts.resolution)
    say(f"photos: {len(names)} from {opts.images} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    ckpt = _checkpoint_name(folder_paths, opts.checkpoint)
    say(f"checkpoint: {folder_paths.get_full_path('checkpoints', ckpt)}")
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]

    resume = None
    if opts.resume is not None:
        # as Load Embedding reads a file: the vectors, and the training state when it is beside them
        resume = emb_io.load(opts.resume)
        resume.state = emb_nodes._read_state(resume, emb_io.state_path(opts.resume))
        settings.validate()  # a bad setting is reported as such, not as a resume mismatch
        resume = train_node.check_resume(resume, settings, host.detect_family(model, clip))

    run = training.prepare(model, clip, vae, images, settings, resume=resume)
    start = run.trainer.step_count
    if start:
        say(f"resuming {opts.token} at step {start} of {opts.steps}")
    say(f"training {opts.token}: {opts.steps} steps, {settings.queries + 1 if not settings.two_sided else 2 * settings.queries} "
        f"forward passes each, on {model.load_device}")
    progress = _Progress(opts.steps, start, not opts.quiet)

    def on_step(r: Any, rate: float) -> None:
        if opts.save_every and r.step % opts.save_every == 0:
            path = common.save_snapshot(train_node._embedding(run), r.step)
            log.info("step %d saved to %s", r.step, path)
        progress.step(r.step, r.loss, rate)

    try:
        training.train(run, on_step=on_step)
    except KeyboardInterrupt:
        progress.close()
        step = run.trainer.step_count
        if step > start:
            path = common.save_snapshot(train_node._embedding(run), step)
            print(f"interrupted at step {step} of {opts.steps}; the token learned so far is in {path}\n"
                  f"continue with: --resume {path}", file=sys.stderr)
        else:
            print(f"interrupted before step {start + 1}; nothing to save", file=sys.stderr)
        return 130
    finally:
        progress.close()
    if run.trainer.skipped_steps:
        say(f"warning: {run.trainer.skipped_steps} steps were skipped (non-finite loss)")

    emb = train_node._embedding(run)
    emb_nodes.ZOODiPSaveEmbedding().save(emb, opts.token, opts.overwrite)
    loss = run.history.loss
    if loss:
        tail = loss[-min(len(loss), 100):]
        say(f"mean loss of the last {len(tail)} steps: {sum(tail) / len(tail):.4f}")
    say(f"saved: use embedding:{target.stem} in a prompt")
    print(target)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(opts, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(message)s")
    try:
        if opts.command == "train":
            return train(opts)
    except UsageError as e:
        print(f"{PROG} {opts.command}: error: {e}", file=sys.stderr)
        return 2
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as e:  # the pack's refusals (bad photos, model family...)
        if opts.verbose:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before or after training (during it, train() saves and returns 130)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {opts.command}")
    return 2
