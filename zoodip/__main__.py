"""``python -m zoodip``: hands the command line to the pack's runner, ``cli.py`` beside this package.

Run it from the pack's folder with ComfyUI's Python, e.g.
``cd ComfyUI/custom_nodes/comfyui-zoodip && python -m zoodip train --help``.
The runner drives ComfyUI, so it lives on the adapter side; it is run here by file path, so the
engine imports nothing of it (the layer rule, ARCHITECTURE.md; tests/engine/test_layers.py).
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    # absolute, not resolved: a pack symlinked into custom_nodes/ keeps that path for the host lookup
    runpy.run_path(str(Path(__file__).absolute().parent.parent / "cli.py"), run_name="__main__")
