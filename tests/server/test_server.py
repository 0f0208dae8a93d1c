"""The pack in the real ComfyUI server, over HTTP and the websocket, as the front end drives it.

The host's own ``main.py`` is started on 127.0.0.1 with every folder in a temp tree (the pack
linked into ``<tmp>/custom_nodes``). The shipped workflow, made small, is queued twice: the first
prompt is cancelled with ``POST /interrupt`` once the websocket shows it training, the second runs
to the end. Both must be in ``/history``: the first interrupted with its snapshot on disk (and the
log saying where), the second a success with its files. A third prompt resumes the snapshot.
About 30 s on 2 idle CPU cores (server start-up ~10 s), so not marked slow.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")

from devtools.host import PACK_NAME, PACK_ROOT  # noqa: E402
from devtools.host_path import host_path  # noqa: E402
from devtools.workflows import ui_to_api  # noqa: E402

WORKFLOW = PACK_ROOT / "workflows" / "train_token.json"
API_WORKFLOW = PACK_ROOT / "workflows" / "api" / "train_token.api.json"
CKPT = "zoodip-tiny-sd15.safetensors"
PHOTOS = "server-photos"
START_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
# the host folders a server could write into; none may change
HOST_WRITABLE = ("models", "input", "output", "temp", "user", "custom_nodes")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path) -> dict[str, float]:
    out = {}
    for name in HOST_WRITABLE:
        for dirpath, _dirs, files in os.walk(root / name):
            for f in files:
                p = Path(dirpath) / f
                out[str(p.relative_to(root))] = p.stat().st_mtime
    out.update({p.name: p.stat().st_mtime for p in root.iterdir() if p.is_file()})
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ComfyUI server with the pack, the tiny checkpoint and photos; killed at the end."""
    from devtools.assets import cached_sd15_checkpoint, make_photos

    base = tmp_path_factory.mktemp("server")
    for d in ("custom_nodes", "models/checkpoints", "models/embeddings", "input", "output", "temp", "user"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    (base / "models" / "checkpoints" / CKPT).symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    make_photos(base / "input" / PHOTOS, n=4, size=64, seed=0)

    root = host_path()
    before = _tree(root)
    port = _free_port()
    log_path = base / "server.log"
    cmd = [sys.executable, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
           "--disable-api-nodes", "--log-stdout"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("COMFYUI_PATH", None)
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, url, log_path)
        yield {"url": url, "base": base, "log": log_path, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the app's own Ctrl+C path
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        log.close()
    assert proc.returncode is not None
    assert _tree(root) == before, "the server wrote into the host's own folders"


def _wait_until_up(proc, url: str, log_path: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/system_stats", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server did not answer within {START_TIMEOUT}s:\n{log_path.read_text(errors='replace')[-4000:]}")


def _node_defs(object_info: dict[str, Any]) -> dict[str, type]:
    """Classes with the server's INPUT_TYPES, for the UI -> API converter."""
    return {name: type(name, (), {"INPUT_TYPES": staticmethod(lambda info=info: info["input"])})
            for name, info in object_info.items()}


def _by_class(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def _small(prompt: dict, token: str, steps: int, filename: str, **train) -> dict:
    """The shipped workflow with the tiny checkpoint and sizes small enough for a CPU test."""
    p = copy.deepcopy(prompt)
    p[_by_class(p, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = CKPT
    p[_by_class(p, "ZOODiPLoadImages")]["inputs"].update(folder=PHOTOS, resolution=64)
    p[_by_class(p, "SubspaceProjector")]["inputs"]["tau"] = 3
    t = p[_by_class(p, "ZOODiPTrainToken")]["inputs"]
    t.update(token_name=token, steps=steps, queries=1, prompt_templates="a photo of a {token}\na {token}")
    for extra in ("save_every", "held_out_every", "preview_every"):  # periodic extras off unless asked
        if extra in t:
            t[extra] = 0
    t.update(train)
    p[_by_class(p, "ZOODiPSaveEmbedding")]["inputs"]["filename"] = filename
    p[_by_class(p, "EmptyLatentImage")]["inputs"].update(width=64, height=64)
    p[_by_class(p, "KSampler")]["inputs"]["steps"] = 2
    p[_by_class(p, "SaveImage")]["inputs"]["filename_prefix"] = f"zoodip/{filename}"
    for node in p.values():
        for k, v in node["inputs"].items():
            if isinstance(v, str) and "embedding:my-dog" in v:
                node["inputs"][k] = v.replace("embedding:my-dog", f"embedding:{token}")
    return p


async def _scenario(url: str, base: Path) -> dict[str, Any]:
    client = str(uuid.uuid4())
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{url}/object_info") as r:
            object_info = await r.json()
        assert "ZOODiPTrainToken" in object_info, "the server did not load the pack"
        assert "save_every" in object_info["ZOODiPTrainToken"]["input"]["optional"]
        if API_WORKFLOW.is_file():
            shipped = json.loads(API_WORKFLOW.read_text())
        else:  # the API form is derived from the UI file with the server's own node definitions
            shipped = ui_to_api(json.loads(WORKFLOW.read_text()), _node_defs(object_info))
        train_id = _by_class(shipped, "ZOODiPTrainToken")
        first = _small(shipped, "srv-cancel", 100_000, "srv-cancel")
        second = _small(shipped, "srv-ok", 3, "srv-ok", save_every=2)

        async def queue(prompt: dict) -> str:
            async with http.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                body = await r.json()
                assert r.status == 200, body
                return body["prompt_id"]

        async def history(prompt_id: str) -> dict:
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                async with http.get(f"{url}/history/{prompt_id}") as r:
                    h = await r.json()
                if prompt_id in h:
                    return h[prompt_id]
                await asyncio.sleep(0.5)
            raise TimeoutError(f"{prompt_id} not in /history after {RUN_TIMEOUT}s")

        async with http.ws_connect(f"{url}/ws?clientId={client}", heartbeat=20) as ws:
            id1 = await queue(first)
            id2 = await queue(second)
            seen = []
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:  # until the first prompt has done two training steps
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no training progress for {id1} in {RUN_TIMEOUT}s; saw {seen[-5:]}")
                msg = await ws.receive(timeout=remaining)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError(f"websocket closed: {msg}")
                    continue  # previews
                event = json.loads(msg.data)
                seen.append(event["type"])
                data = event.get("data") or {}
                if event["type"] == "execution_error":
                    raise AssertionError(f"the first prompt failed: {data}")
                if (event["type"] == "progress" and data.get("prompt_id") == id1 and data.get("node") == train_id
                        and data["value"] >= 2):
                    break
            async with http.post(f"{url}/interrupt", json={"prompt_id": id1}) as r:
                assert r.status == 200
            h1 = await history(id1)
            h2 = await history(id2)
        async with http.get(f"{url}/object_info/ZOODiPLoadEmbedding") as r:
            listed = (await r.json())["ZOODiPLoadEmbedding"]["input"]["required"]["embedding_name"][0]

        # resume the cancelled run's snapshot for one more step, through Load Embedding
        snaps = sorted((base / "models" / "embeddings" / "zoodip-runs" / "srv-cancel").glob("step-*.safetensors"))
        assert len(snaps) == 1, snaps
        k = int(snaps[0].stem.split("-")[1])
        third = _small(shipped, "srv-cancel", k + 1, "srv-resumed")
        third["90"] = {"class_type": "ZOODiPLoadEmbedding", "inputs": {"embedding_name": f"zoodip-runs/srv-cancel/{snaps[0].name}"}}
        third[train_id]["inputs"]["resume"] = ["90", 0]
        h3 = await history(await queue(third))
    return {"h1": h1, "h2": h2, "h3": h3, "k": k, "listed": listed, "train_id": train_id, "shipped": shipped}


def test_cancel_then_success_over_http(server):
    base, url = server["base"], server["url"]
    r = asyncio.run(asyncio.wait_for(_scenario(url, base), timeout=3 * RUN_TIMEOUT))
    h1, h2, h3, k = r["h1"], r["h2"], r["h3"], r["k"]
    emb = base / "models" / "embeddings"

    # the first prompt: interrupted while training, its token kept in a snapshot
    events1 = [m[0] for m in h1["status"]["messages"]]
    assert h1["status"]["status_str"] == "error" and "execution_interrupted" in events1, h1["status"]
    assert k >= 2
    snap = emb / "zoodip-runs" / "srv-cancel" / f"step-{k}.safetensors"
    assert snap.is_file() and snap.with_suffix(".zoodip-state").is_file()
    log = server["log"].read_text(errors="replace")
    assert f"cancelled at step {k} of 100000" in log and f"zoodip-runs/srv-cancel/step-{k}.safetensors" in log
    assert f"zoodip-runs/srv-cancel/step-{k}.safetensors" in r["listed"]
    assert not (emb / "srv-cancel.safetensors").exists()  # the graph stopped at the training node

    # the second: a success, with the sample, the embedding and save_every's snapshot
    assert h2["status"]["status_str"] == "success", h2["status"]
    save_image = _by_class(r["shipped"], "SaveImage")
    images = h2["outputs"][save_image]["images"]
    assert len(images) == 1 and (base / "output" / images[0]["subfolder"] / images[0]["filename"]).is_file()
    assert (emb / "srv-ok.safetensors").is_file() and (emb / "srv-ok.zoodip-state").is_file()
    assert sorted(p.name for p in (emb / "zoodip-runs" / "srv-ok").iterdir()) == ["step-2.safetensors", "step-2.zoodip-state"]

    # the third: resumed from the snapshot at step k, one step more
    assert h3["status"]["status_str"] == "success", h3["status"]
    from safetensors import safe_open

    with safe_open(str(emb / "srv-resumed.safetensors"), "pt") as f:
        assert f.metadata()["zoodip.step"] == str(k + 1)
    assert f"srv-cancel resumes at step {k} of {k + 1}" in server["log"].read_text(errors="replace")
