"""The command line of ``python -m zoodip train``: its options, and the checks that need no host.

Plain argparse over the engine's settings table; nothing here imports ComfyUI. The runner that
drives the host (finds and starts ComfyUI, loads the pack with the host's loader, the checkpoint
with ``CheckpointLoaderSimple``, and trains with the node's code) is the pack root's ``cli.py`` and
``nodes/cli.py``; ``python -m zoodip`` (``zoodip/__main__.py``) hands the command line to it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from .settings import SETTINGS, PUTSConfig, SubspaceConfig, TrainSettings, add_arguments, dest, paper_value

PROG = "python -m zoodip"


class UsageError(Exception):
    """A bad option value, found before ComfyUI is imported; exit status 2, like argparse's."""


# -- arguments ----------------------------------------------------------------------------------

DESCRIPTION = """\
Learn a new token (textual inversion) from a few photos with forward passes only (ZOODiP,
arXiv 2503.14868), headless, with the same code the ZOODiP Train Token node runs. The result is
written where the app writes it, models/embeddings/<token>.safetensors, so any prompt in ComfyUI
can use it as embedding:<token>. Defaults are the paper's, for the checkpoint's family where the
paper's differ (mu, PUTS); PUTS and Subspace Gradient are on, as in the shipped workflow.
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


# the TrainSettings fields that are command-line options, each under its SETTINGS flag
_TRAIN_OPTIONS = tuple(f.name for f in fields(TrainSettings) if f.name in SETTINGS and SETTINGS[f.name].flag)
# options whose default is the paper's value for the checkpoint's family, known once it is loaded
BY_FAMILY = tuple(name for name in _TRAIN_OPTIONS if isinstance(SETTINGS[name].paper, dict))
PUTS_BY_FAMILY = isinstance(SETTINGS["t_min"].paper, dict) or isinstance(SETTINGS["t_max"].paper, dict)


def build_parser() -> argparse.ArgumentParser:
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

    t = p.add_argument_group("training (defaults are the paper's, for the checkpoint's family where they differ)")
    add_arguments(t, [name for name in _TRAIN_OPTIONS if name != "token_name"], by_family=BY_FAMILY)
    puts = t.add_mutually_exclusive_group()
    t_min, t_max = SETTINGS["t_min"], SETTINGS["t_max"]
    puts.add_argument("--puts", nargs=2, type=int, default=None, metavar=("T_MIN", "T_MAX"),
                      help=f"PUTS: draw training timesteps from [T_MIN, T_MAX) of the model's 1000 (default: the "
                           f"paper's for the checkpoint's family: T_MIN {t_min.paper_text().removeprefix('the paper uses ')}"
                           f", T_MAX {t_max.paper_text().removeprefix('the paper uses ')}; T_MIN {t_min.range_text()}, "
                           f"T_MAX {t_max.range_text()})")
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
                   help="the ComfyUI folder (default: $COMFYUI_PATH, else the ComfyUI whose custom_nodes holds this pack, "
                        "else ../shared/comfyui beside the pack, the development layout)")
    o.add_argument("--base-directory", metavar="DIR",
                   help="like ComfyUI's --base-directory: models, input, output, temp and user folders under DIR")
    o.add_argument("--cpu", action="store_true", help="run on the CPU, like ComfyUI's --cpu (needed wherever ComfyUI itself needs it, e.g. without a GPU)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no messages; only the saved file's path is printed")
    o.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's log")
    return parser


def settings_kwargs(opts: argparse.Namespace, family: str | None = None) -> dict[str, Any]:
    """The TrainSettings fields from the options (PUTS/subspace as plain tuples, filled in later).

    An option of ``BY_FAMILY`` left out takes the paper's value for ``family`` (before the checkpoint
    is loaded, ``None``: the first family's, which only the checks see)."""
    templates = SETTINGS["prompt_templates"].default
    if opts.templates is not None:
        try:
            templates = opts.templates.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise UsageError(f"cannot read --templates {opts.templates}: {e}") from None
    values = {name: getattr(opts, dest(name)) for name in _TRAIN_OPTIONS}
    for name in BY_FAMILY:
        if values[name] is None:
            values[name] = paper_value(name, family)
    return {**values, "prompt_templates": templates}


def family_defaults(opts: argparse.Namespace) -> list[str]:
    """The settings the options left to the paper's value for the checkpoint's family (as messages name them)."""
    out = [SETTINGS[name].what for name in BY_FAMILY if getattr(opts, dest(name)) is None]
    if PUTS_BY_FAMILY and opts.puts is None and not opts.no_puts:
        out.append("PUTS")
    return out


def train_settings(opts: argparse.Namespace, family: str | None = None) -> TrainSettings:
    """The run's settings from the options, for a checkpoint of ``family`` (not validated yet)."""
    s = TrainSettings(**settings_kwargs(opts, family))
    if opts.no_puts:
        s.puts = None
    elif opts.puts is not None:
        s.puts = PUTSConfig(*opts.puts)
    else:
        s.puts = PUTSConfig(paper_value("t_min", family), paper_value("t_max", family))
    s.subspace = None if opts.no_subspace else SubspaceConfig(opts.tau, opts.nu)
    return s


def check_options(opts: argparse.Namespace) -> None:
    """Everything that can be refused without the host, refused before it is imported."""
    s = train_settings(opts)
    try:
        s.validate()
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    if not opts.images.is_dir():
        raise UsageError(f"--images {opts.images} is not a folder")
    if opts.resume is not None and not opts.resume.is_file():
        raise UsageError(f"--resume {opts.resume} is not a file")
