"""The real ComfyUI app for the browser tests: the host's own main.py on a free local port, every
folder in a temp tree, the pack linked into ``<tmp>/custom_nodes/comfyui-zoodip``, a tiny
generated SD1.5 checkpoint and four photos; and headless Chromium driven by Selenium.

The server is shared by tests/browser (one start-up, ~15-30 s). The browser tests skip, with the
reason, when Chromium, its driver or Selenium is missing (``bash scripts/setup_browser.sh``
installs them); the HTTP checks need only the server.

Screenshots go to ``out/browser/`` (or ``$ZOODIP_SCREENSHOT_DIR``). With
``ZOODIP_UPDATE_SCREENSHOTS=1`` the tests also refresh the committed pictures:
``docs/screenshots/*.png`` and the template thumbnails ``workflows/*.jpg``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-zoodip"
CKPT = "zoodip-tiny-sd15.safetensors"
PHOTOS = "my-dog"
START_TIMEOUT = float(os.environ.get("ZOODIP_SERVER_TIMEOUT", "240"))
UPDATE = os.environ.get("ZOODIP_UPDATE_SCREENSHOTS") == "1"
SHOTS = Path(os.environ.get("ZOODIP_SCREENSHOT_DIR") or REPO / "out" / "browser")
# The app's first start shows a template picker and a minimap; a test wants a plain canvas.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    # full node detail at any zoom, so screenshots of a whole graph stay readable
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
}
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Only the local server: the app's update check (api.comfy.org) fails fast instead of waiting.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--window-size=1920,1080",
    "--force-device-scale-factor=1",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    base: Path
    log: Path
    proc: subprocess.Popen

    def get(self, path: str, timeout: float = 30) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET ``path``."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def json(self, path: str):
        status, _, body = self.get(path)
        assert status == 200, f"GET {path}: {status}"
        return json.loads(body)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _make_tree(base: Path) -> None:
    from devtools.assets import cached_sd15_checkpoint, make_photos

    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / CKPT).symlink_to(cached_sd15_checkpoint("tiny", seed=0))
    make_photos(base / "input" / PHOTOS, n=4, size=64, seed=0)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(SETTINGS, indent=2))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the app shuts down cleanly
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def comfy_server() -> Iterator[Server]:
    from devtools.host_path import host_path

    root = host_path()
    if not (root / "main.py").is_file():
        pytest.skip(f"no ComfyUI at {root} (set COMFYUI_PATH)")
    base = Path(tempfile.mkdtemp(prefix="zoodip-app-"))
    _make_tree(base)
    port = free_port()
    log = base / "server.log"
    cmd = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", base, log, proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the ComfyUI server exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.get("/object_info/ZOODiPTrainToken", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the ComfyUI server did not answer within {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def _chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or the reason they are unusable."""
    browser = os.environ.get("ZOODIP_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("ZOODIP_CHROMEDRIVER") or shutil.which("chromedriver")
    if driver is None and Path("/usr/lib/chromium/chromedriver").is_file():
        driver = "/usr/lib/chromium/chromedriver"
    if browser is None or driver is None or not (Path(browser).is_file() and Path(driver).is_file()):
        return "Chromium and chromedriver are not installed (bash scripts/setup_browser.sh installs them)"
    return browser, driver


@pytest.fixture(scope="session")
def browser_paths() -> tuple[str, str]:
    found = _chromium()
    if isinstance(found, str):
        pytest.skip(found)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed in the venv (bash scripts/setup_browser.sh installs it)")
    return found


@pytest.fixture
def driver(browser_paths, tmp_path):
    """A fresh headless Chromium (fresh profile) per test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = browser_paths
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) is never called.
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_script_timeout(120)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def save_shot():
    """``save_shot(png_bytes, name, committed=None)``: keep a screenshot in out/browser/, and with
    ZOODIP_UPDATE_SCREENSHOTS=1 also at ``committed`` (a path in the repository)."""

    def save(png: bytes, name: str, committed: Path | None = None) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        path.write_bytes(png)
        if UPDATE and committed is not None:
            committed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, committed)
        return path

    return save
