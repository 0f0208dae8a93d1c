"""The command line's run, inside the host: what ``python -m zoodip train`` does once the pack is loaded.

The pack root's ``cli.py`` finds and starts ComfyUI and loads this pack with the host's loader;
this module then does what the ZOODiP Train Token node does, with the node's own code: the
checkpoint through ``CheckpointLoaderSimple``, a resume through Load Embedding's reader and the
node's resume check, ``training.prepare``/``train``, snapshots and the final file through
``save_snapshot`` and the Save Embedding node.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import folder_paths

import nodes as host_nodes  # the host's nodes.py (this package is the pack's nodes/)

from ..zoodip import embedding as emb_io
from ..zoodip.cli import PROG, family_defaults, train_settings
from ..zoodip.images import load_folder
from ..zoodip.trainer import NonFiniteLossError
from . import host, training
from .common import embedding_path, save_snapshot
from .embeddings import ZOODiPSaveEmbedding, read_state
from .train import check_resume

log = logging.getLogger("zoodip.cli")


def checkpoint_name(checkpoint: str) -> str:
    """The name CheckpointLoaderSimple takes: a file path's folder is put first in the list."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        folder_paths.add_model_folder_path("checkpoints", str(path.resolve().parent), is_default=True)
        return path.name
    if folder_paths.get_full_path("checkpoints", checkpoint) is None:
        names = folder_paths.get_filename_list("checkpoints")
        listed = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "none"
        raise ValueError(
            f"--checkpoint {checkpoint!r} is neither a file nor in ComfyUI's checkpoints folders "
            f"({', '.join(folder_paths.get_folder_paths('checkpoints'))}); found there: {listed}"
        )
    return checkpoint


class Progress:
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


def train(opts: argparse.Namespace, target: Path, say: Callable[..., None]) -> int:
    """Train and save as the options say; ``target`` is where the runner found the file goes.

    Returns the exit status: 0 saved, 1 stopped by an error the user can act on (non-finite losses, a
    failed save; the token learned so far is saved first, as on Ctrl-C), 130 interrupted. Refusals
    raise ValueError."""
    if embedding_path(opts.token) != target:  # the node's own rule must agree
        raise ValueError(f"internal: the pack would save to {embedding_path(opts.token)}, not {target}")
    images, names = load_folder(opts.images, opts.resolution)
    say(f"photos: {len(names)} from {opts.images} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    ckpt = checkpoint_name(opts.checkpoint)
    say(f"checkpoint: {folder_paths.get_full_path('checkpoints', ckpt)}")
    model, clip, vae = host_nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
    family = host.detect_family(model, clip)
    # the options left out whose paper value depends on the family (mu, PUTS) take this family's
    settings = train_settings(opts, family.name)
    settings.validate()  # once, before the resume check (the runner's check_options ran before the host started)
    by_family = family_defaults(opts)
    if by_family:
        say(f"{family.name}: {', '.join(by_family)} at the paper's values for this family")

    resume = None
    if opts.resume is not None:
        # as Load Embedding reads a file: the vectors, and the training state when it is beside them
        resume = emb_io.load(opts.resume)
        resume.state = read_state(resume, emb_io.state_path(opts.resume))
        resume = check_resume(resume, settings, family)

    run = training.prepare(model, clip, vae, images, settings, resume=resume)
    start = run.trainer.step_count
    if start:
        say(f"resuming {opts.token} at step {start} of {opts.steps}")
    say(f"training {opts.token}: {opts.steps} steps, {settings.queries + 1 if not settings.two_sided else 2 * settings.queries} "
        f"forward passes each, on {model.load_device}")
    progress = Progress(opts.steps, start, not opts.quiet)
    saved: dict[str, Any] = {"step": start, "path": None}  # the last step whose token is on disk

    def snapshot() -> Path:
        path = save_snapshot(run.embedding(), run.trainer.step_count)
        saved.update(step=run.trainer.step_count, path=path)
        return path

    def on_step(r: Any, rate: float) -> None:
        # only a token some step changed since the last save is written (skipped steps change nothing)
        if opts.save_every and r.step % opts.save_every == 0 and training.learned_since(run, saved["step"]):
            try:
                log.info("step %d saved to %s", r.step, snapshot())
            except OSError as e:  # a full disk should not end a long run; the next save tries again
                say(f"warning: could not save step {r.step}: {e}")
        progress.step(r.step, r.loss, rate)

    try:
        try:
            training.train(run, on_step=on_step)
        finally:
            progress.close()
    except (KeyboardInterrupt, Exception) as e:  # Ctrl-C, non-finite losses...: keep what was learned
        step = run.trainer.step_count
        where, save_error = saved["path"], None
        if training.learned_since(run, saved["step"]):
            try:
                where = snapshot()
            except Exception as err:  # never hide the original error behind this one
                save_error = err
        if save_error is not None:
            kept = f"could not save the token learned since step {saved['step']}: {save_error}" + (
                f"; the last saved token is {where}" if where is not None else "")
        elif where is not None:
            kept = f"the token learned so far is in {where}\ncontinue with: --resume {where}"
        else:
            kept = f"no step changed the token since step {start}; nothing to save"
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted at step {step} of {opts.steps}; {kept}", file=sys.stderr)
            return 130
        if isinstance(e, NonFiniteLossError | OSError):  # the model, the settings or the disk: said in a sentence
            print(f"{PROG}: error: {e}\n{kept}", file=sys.stderr)
            return 1
        print(kept, file=sys.stderr)
        raise
    if run.trainer.skipped_steps:
        say(f"warning: {run.trainer.skipped_steps} steps were skipped (non-finite loss)")

    try:
        ZOODiPSaveEmbedding().save(run.embedding(), opts.token, opts.overwrite)
    except OSError as e:  # a full disk, a file that appeared meanwhile: the trained token goes to zoodip-runs
        try:
            kept = f"the trained token is in {snapshot()}"
        except Exception as err:
            kept = f"it could not be saved to zoodip-runs either: {err}"
        print(f"{PROG}: error: {e}\n{kept}", file=sys.stderr)
        return 1
    loss = run.history.loss
    if loss:
        tail = loss[-min(len(loss), 100):]
        say(f"mean loss of the last {len(tail)} steps: {sum(tail) / len(tail):.4f}")
    say(f"saved: use embedding:{target.stem} in a prompt")
    print(target)
    return 0
