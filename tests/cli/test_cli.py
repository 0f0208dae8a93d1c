"""``python -m zoodip train``: the command-line runner, as a user runs it (a subprocess).

Everything it writes goes to a temp tree (``--base-directory``); the host at ``host_path()`` is
only read. The node runs in the session's headless host for the comparisons: the CLI must give
the token the Train Token node gives, bit for bit, including after a resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "cli-tok"
STEPS = 4
# small and fast: 64 px photos, tau 2 so the subspace projector refreshes within the run
COMMON = ["--cpu", "--resolution", "64", "--tau", "2", "--seed", "3", "--init-word", "dog"]
HOST_WRITABLE = ("models", "input", "output", "temp", "user")
HOST_MODULES = ("comfy", "nodes", "folder_paths", "execution", "server", "comfy_extras")


def runner():
    """The pack root's cli.py (the host runner), loaded by path under its own name, as zoodip/__main__.py runs it."""
    import importlib.util

    name = "zoodip_root_cli"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "cli.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "zoodip", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _files(root: Path) -> dict[str, int]:
    out = {}
    for name in HOST_WRITABLE:
        for p in (root / name).rglob("*") if (root / name).is_dir() else ():
            if p.is_file():
                out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def _vectors(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))["emb_params"]


def _metadata(path: Path) -> dict:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from devtools.assets import cached_sd15_checkpoint, make_photos

    photos = tmp_path_factory.mktemp("cli_photos") / "dog"
    make_photos(photos, n=4, size=64, seed=0)
    return cached_sd15_checkpoint("tiny", seed=0), photos


@pytest.fixture(scope="module")
def comfyui() -> Path:
    from devtools.host_path import host_path

    return host_path()


@pytest.fixture(scope="module")
def trained(assets, comfyui, tmp_path_factory):
    """One CLI run of STEPS steps into a fresh base directory."""
    ckpt, photos = assets
    base = tmp_path_factory.mktemp("cli_base")
    before = _files(comfyui)
    t0 = time.perf_counter()
    r = run_cli("train", "--comfyui", str(comfyui), "--base-directory", str(base), "--checkpoint", str(ckpt),
                "--images", str(photos), "--token", TOKEN, "--steps", str(STEPS), *COMMON)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    return {"result": r, "base": base, "path": base / "models" / "embeddings" / f"{TOKEN}.safetensors",
            "host_files_before": before, "seconds": seconds}


def node_token(host, photos: Path, steps: int, filename: str) -> Path:
    """The same training through the Train Token node in the headless host."""
    import shutil

    from devtools.assets import cached_sd15_checkpoint

    ckpt = host.model_dir("checkpoints") / "cli-compare-tiny.safetensors"
    if not ckpt.exists():
        ckpt.symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    folder = host.input_dir / "cli-compare"
    if not folder.exists():
        shutil.copytree(photos, folder)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt.name}},
        "2": {"class_type": "ZOODiPLoadImages", "inputs": {"folder": folder.name, "resolution": 64}},
        "3": {"class_type": "PUTSSamplerConfig", "inputs": {"t_min": 500, "t_max": 900}},
        "4": {"class_type": "SubspaceProjector", "inputs": {"tau": 2, "nu": 1e-3}},
        "5": {"class_type": "ZOODiPTrainToken", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "token_name": TOKEN,
            "init_word": "dog", "num_vectors": 1, "steps": steps, "learning_rate": 5e-3, "queries": 2,
            "perturbation": 1e-3, "seed": 3, "puts": ["3", 0], "subspace": ["4", 0]}},
        "6": {"class_type": "ZOODiPSaveEmbedding", "inputs": {"embedding": ["5", 1], "filename": filename, "overwrite": True}},
    }
    result = host.run_prompt(prompt)
    assert result.ok, result.errors
    return host.model_dir("embeddings") / f"{filename}.safetensors"


# -- no host needed -----------------------------------------------------------------------------

def test_help_explains_every_option():
    r = run_cli("train", "--help")
    assert r.returncode == 0, r.stderr
    from zoodip.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        for flag in action.option_strings:
            assert flag in r.stdout, f"{flag} missing from --help"
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 20, f"{action.option_strings} has no real help text"
    for word in ("embedding:", "models/embeddings", "--resume", "Ctrl-C", "PUTS", "Subspace"):
        assert word in r.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "train" in top.stdout


def test_options_left_out_take_the_paper_values_of_the_checkpoints_family(tmp_path):
    from zoodip.cli import build_parser, family_defaults, train_settings
    from zoodip.settings import paper_value

    base = ["train", "--checkpoint", "x", "--images", str(tmp_path), "--token", "t"]
    opts = build_parser().parse_args(base)
    for family in ("SD1.x", "SD2.x", "SDXL"):
        s = train_settings(opts, family)
        assert s.perturbation == paper_value("perturbation", family)
        assert (s.puts.t_min, s.puts.t_max) == (paper_value("t_min", family), paper_value("t_max", family))
        assert family_defaults(opts) == ["perturbation (mu)", "PUTS"]
    # SDXL is not trained with SD1.x's values (the paper: mu 1e-2, PUTS t_max 700)
    sdxl = train_settings(opts, "SDXL")
    assert (sdxl.perturbation, sdxl.puts.t_max) == (1e-2, 700)
    # what the user gives is what runs
    given = build_parser().parse_args([*base, "--mu", "0.005", "--puts", "400", "800"])
    s = train_settings(given, "SDXL")
    assert s.perturbation == 0.005 and (s.puts.t_min, s.puts.t_max) == (400, 800)
    assert family_defaults(given) == []
    assert train_settings(build_parser().parse_args([*base, "--no-puts"]), "SDXL").puts is None
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "the paper's value for the checkpoint's family" in help_text


def test_importing_the_engine_and_cli_never_imports_the_host():
    code = (
        "import sys, zoodip, zoodip.cli, zoodip.__main__ as m\n"
        "zoodip.cli.build_parser().parse_args(['train', '--checkpoint', 'x', '--images', '.', '--token', 't'])\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {HOST_MODULES!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--token", "../escape"], "looks like a path"),
        (["--token", "ok", "--puts", "900", "500"], "t_min below t_max"),
        (["--token", "ok", "--nu", "2"], "nu must be strictly between 0 and 1"),
        (["--token", "ok", "--resolution", "100"], "multiple of 8"),
        (["--token", "ok", "--steps", "0"], "must be at least 1"),
        (["--token", "ok", "--images", "/nonexistent/photos"], "is not a folder"),
    ],
)
def test_bad_options_are_refused_before_the_host_starts(args, message, tmp_path, capsys):
    main = runner().main

    base = ["train", "--checkpoint", "x.safetensors", "--images", str(tmp_path), "--comfyui", str(tmp_path / "nope")]
    try:
        code = main([*base, *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "no ComfyUI found" not in err  # refused before looking for the host


def test_missing_host_is_a_clear_error(tmp_path, capsys):
    main = runner().main

    code = main(["train", "--checkpoint", "x", "--images", str(tmp_path), "--token", "t", "--comfyui", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 1
    assert "no ComfyUI found" in err and "--comfyui" in err


def test_host_lookup_matches_the_dev_tools(monkeypatch, tmp_path):
    from devtools.host_path import host_path

    find_comfyui = runner().find_comfyui

    assert find_comfyui() == host_path()
    fake = tmp_path / "ComfyUI"
    (fake / "custom_nodes").mkdir(parents=True)
    for f in ("nodes.py", "folder_paths.py", "main.py"):
        (fake / f).write_text("")
    monkeypatch.setenv("COMFYUI_PATH", str(fake))
    assert find_comfyui() == host_path() == fake.resolve()
    # a user's install: the pack (here a symlink) in <ComfyUI>/custom_nodes, run from its folder
    link = fake / "custom_nodes" / "comfyui-zoodip"
    link.symlink_to(REPO, target_is_directory=True)
    code = "import runpy; print(runpy.run_path('cli.py')['find_comfyui']())"
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=link, env={**env, "PWD": str(link)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == fake.resolve()


# -- real runs ----------------------------------------------------------------------------------

def test_train_writes_an_embedding_the_host_reads(trained, comfyui, host):
    r, path = trained["result"], trained["path"]
    assert r.stdout.strip().splitlines()[-1] == str(path)
    assert path.is_file() and path.with_name(f"{TOKEN}.zoodip-state").is_file()
    assert f"{STEPS}/{STEPS}" in r.stderr  # the progress bar reached the end
    assert "loss" in r.stderr and f"embedding:{TOKEN}" in r.stderr

    import comfy.sd1_clip

    loaded = comfy.sd1_clip.load_embed(TOKEN, [str(path.parent)], 768)
    assert loaded is not None and tuple(loaded.shape) == (1, 768)
    assert bool((loaded == _vectors(path)).all())
    # nothing written into the host's own folders
    assert _files(comfyui) == trained["host_files_before"]
    print(f"CLI run of {STEPS} steps: {trained['seconds']:.1f} s")


def test_cli_and_node_train_the_same_token(trained, assets, host):
    node_path = node_token(host, assets[1], STEPS, "cli-compare-node")
    import torch

    assert torch.equal(_vectors(trained["path"]), _vectors(node_path))
    cli_meta, node_meta = _metadata(trained["path"]), _metadata(node_path)
    assert cli_meta["zoodip.settings"] == node_meta["zoodip.settings"]
    assert cli_meta == node_meta


def test_refuses_to_overwrite_before_any_work(trained, comfyui, assets):
    path = trained["path"]
    before = path.read_bytes()
    r = run_cli("train", "--comfyui", str(comfyui), "--base-directory", str(trained["base"]), "--checkpoint",
                str(assets[0]), "--images", str(assets[1]), "--token", TOKEN, "--steps", str(STEPS), *COMMON)
    assert r.returncode == 1
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert "checkpoint:" not in r.stderr  # refused before the model was loaded
    assert path.read_bytes() == before


def test_output_dir_is_where_the_file_goes(trained, comfyui, assets, tmp_path):
    out = tmp_path / "my-embeddings"
    out.mkdir()
    (out / f"{TOKEN}.safetensors").write_bytes(b"taken")
    r = run_cli("train", "--comfyui", str(comfyui), "--base-directory", str(trained["base"]), "--checkpoint",
                str(assets[0]), "--images", str(assets[1]), "--token", TOKEN, "--output-dir", str(out), *COMMON)
    assert r.returncode == 1
    assert str(out / f"{TOKEN}.safetensors") in r.stderr
    assert (out / f"{TOKEN}.safetensors").read_bytes() == b"taken"


def test_resume_with_overwrite_continues_exactly(trained, comfyui, assets, host):
    """4 steps, then --resume to 6 (replacing the file) == 6 straight steps of the node."""
    path = trained["path"]
    r = run_cli("train", "--comfyui", str(comfyui), "--base-directory", str(trained["base"]), "--checkpoint",
                str(assets[0]), "--images", str(assets[1]), "--token", TOKEN, "--steps", str(STEPS + 2),
                "--resume", str(path), "--overwrite", *COMMON)
    assert r.returncode == 0, r.stderr
    assert f"resuming {TOKEN} at step {STEPS}" in r.stderr
    import torch

    straight = node_token(host, assets[1], STEPS + 2, "cli-compare-node-6")
    assert torch.equal(_vectors(path), _vectors(straight))


def test_a_run_stopped_by_an_error_saves_the_token_and_says_so(host, assets, monkeypatch, capsys):
    """Non-finite losses stop the run: exit status 1 with a sentence (no traceback), and the token learned so far
    saved as on Ctrl-C, with how to resume (the runner in the session's host, its loss turned NaN after 2 steps)."""
    import importlib
    import math
    import shutil

    import torch

    from zoodip.cli import build_parser

    pack = host.pack_module.__name__
    cli_runner = importlib.import_module(f"{pack}.nodes.cli")
    training = importlib.import_module(f"{pack}.nodes.training")
    ckpt = host.model_dir("checkpoints") / "cli-compare-tiny.safetensors"
    if not ckpt.exists():
        ckpt.symlink_to(assets[0])
    real_prepare = training.prepare

    def prepare(*a, **kw):
        run = real_prepare(*a, **kw)
        loss, calls = run.trainer.loss_fn, []

        def nan_after_two_steps(thetas, seed):
            calls.append(seed)
            out = loss(thetas, seed)
            return out if len(calls) <= 2 else torch.full_like(out, math.nan)

        run.trainer.loss_fn = nan_after_two_steps
        return run

    monkeypatch.setattr(training, "prepare", prepare)
    embeddings = host.model_dir("embeddings")
    runs = embeddings / "zoodip-runs" / "cli-nan"
    opts = build_parser().parse_args(["train", "--checkpoint", ckpt.name, "--images", str(assets[1]), "--token",
                                      "cli-nan", "--steps", "20", "--quiet", *COMMON])
    try:
        code = cli_runner.train(opts, embeddings / "cli-nan.safetensors", lambda *a: None)
        err = capsys.readouterr().err
        assert code == 1, err
        assert "python -m zoodip: error: 5 steps in a row gave non-finite losses" in err
        snap = runs / "step-7.safetensors"  # stopped at step 7: steps 3-7 were skipped
        assert f"the token learned so far is in {snap}\ncontinue with: --resume {snap}" in err
        assert snap.is_file() and snap.with_name("step-7.zoodip-state").is_file()
        assert not (embeddings / "cli-nan.safetensors").exists()
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def test_ctrl_c_saves_a_snapshot_to_resume_from(assets, comfyui, tmp_path):
    """Ctrl-C in the middle of training: exit 130, the token so far in zoodip-runs/, and how to resume."""
    import re
    import signal
    import threading

    ckpt, photos = assets
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoodip", "train", "--comfyui", str(comfyui), "--base-directory", str(tmp_path),
         "--checkpoint", str(ckpt), "--images", str(photos), "--token", "cli-stop", "--steps", "100000", *COMMON],
        cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"\b[1-9]\d*/100000\b", "".join(err)):
            assert proc.poll() is None, "".join(err)
            assert time.monotonic() < deadline, "no training step within 300 s:\n" + "".join(err)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(err)
    assert code == 130, text
    snaps = sorted((tmp_path / "models" / "embeddings" / "zoodip-runs" / "cli-stop").glob("step-*.safetensors"))
    assert len(snaps) == 1, text
    assert snaps[0].with_name(snaps[0].stem + ".zoodip-state").is_file()
    assert f"--resume {snaps[0]}" in text
    assert not (tmp_path / "models" / "embeddings" / "cli-stop.safetensors").exists()
