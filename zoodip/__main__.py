"""``python -m zoodip``: the command-line runner (see :mod:`zoodip.cli`, ``--help``).

Run it from the pack's folder with ComfyUI's Python, e.g.
``cd ComfyUI/custom_nodes/comfyui-zoodip && python -m zoodip train --help``.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
