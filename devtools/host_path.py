"""Locate the ComfyUI host and import it headless (CPU, no argument parsing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent


def host_path() -> Path:
    """$COMFYUI_PATH, else the ComfyUI root holding this pack, else ``<pack>/../shared/comfyui``."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().resolve()
    # A user's install: <root>/custom_nodes/<pack>. Check the unresolved path too, since
    # packs are often symlinked into custom_nodes.
    for pack in (Path(__file__).absolute().parent.parent, PACK_ROOT):
        if (
            pack.parent.name == "custom_nodes"
            and (pack.parent.parent / "nodes.py").is_file()
        ):
            return pack.parent.parent
    return (PACK_ROOT.parent / "shared" / "comfyui").resolve()


def import_host() -> Path:
    """Put the host on sys.path and force CPU before comfy.model_management loads. Idempotent."""
    root = host_path()
    if not (root / "nodes.py").is_file():
        raise FileNotFoundError(f"no ComfyUI host at {root} (set COMFYUI_PATH)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options  # noqa: F401  -- imported first so cli_args does not parse sys.argv
    from comfy.cli_args import args

    # model_management reads args.cpu once at import; setting it later has no effect.
    args.cpu = True
    return root
