"""What the benchmark scripts share: the pack as the host loaded it, first-order TI, result files,
log lines, the machine's description.

The benchmarks run as modules from the repository root (``python -m benchmarks.speed``), so none
of them touches sys.path; ``benchmarks.toymodel`` and this module import no benchmark script.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then the caller's again. CPU kernels sum in a thread-dependent
    order, so whatever must come out the same on every run (the toy's weights, the judge's) trains
    at a fixed count."""
    import torch

    caller = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(caller)


def pack(session: Any, *modules: str) -> dict[str, ModuleType]:
    """The pack's modules (e.g. "nodes.training", "zoodip.seeds") as the host loaded the pack
    (custom_nodes/<pack>), not a second copy imported from the repository; keyed by those names."""
    name = session.pack_module.__name__
    return {m: importlib.import_module(f"{name}.{m}") for m in modules}


class FirstOrderTI:
    """Textual inversion by backpropagation, the baseline a ZOODiP step is compared with.

    Same loss object as ZOODiP (the host's text encoder and UNet, the same draws); the token is a
    leaf tensor and only its gradient is computed (``loss_gradient``): the host's frozen
    weights get none, as in the usual TI scripts, which train the embedding only. The executor
    runs nodes under inference mode and the host mutates some tensors in place, hence the modes.
    """

    def __init__(self, loss_fn: Any, theta0: Any, derive_seed: Any, seed: int = 0, lr: float = 5e-3) -> None:
        import torch

        self.loss_fn, self.derive_seed, self.seed, self.k = loss_fn, derive_seed, seed, 0
        with torch.inference_mode(False):
            self.theta = theta0.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.theta], lr=lr)

    def step(self) -> dict[str, Any]:
        import torch

        loss, g = loss_gradient(self.loss_fn, self.theta, self.derive_seed(self.seed, self.k, 2))
        with torch.inference_mode(False):
            self.theta.grad = g
            self.opt.step()
        self.k += 1
        return {"loss": loss, "grad_norm": float(g.norm())}


def loss_gradient(loss_fn: Any, theta: Any, data_seed: int) -> tuple[float, Any]:
    """The loss of one draw at ``theta`` and its exact gradient (backprop to the token only)."""
    import torch

    with torch.inference_mode(False), torch.enable_grad(), torch.autograd.graph.allow_mutation_on_saved_tensors():
        leaf = theta.detach().clone().requires_grad_(True)
        loss = loss_fn(leaf.unsqueeze(0), data_seed)[0]
        (g,) = torch.autograd.grad(loss, [leaf])
    return float(loss.detach()), g.detach()


def cosine(a: Any, b: Any) -> float:
    """Cosine of two tensors of any shape, in float64; 0 if either is zero."""
    import torch

    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = float(a.norm() * b.norm())
    return float(torch.dot(a, b)) / den if den > 0 else 0.0


def write_json(out: Path, result: dict[str, Any]) -> None:
    """Write the result file whole or not at all (a temp file renamed over it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def say(msg: str, stream: TextIO | None = None) -> None:
    """A progress line with the time (stdout unless ``stream``, flushed)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout if stream is None else stream, flush=True)


def machine_info(session: Any, device: str) -> dict[str, Any]:
    """The machine a result was measured on: device, torch, CPU, the host's version."""
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        ns: dict[str, Any] = {}
        exec((Path(session.host_root) / "comfyui_version.py").read_text(), ns)  # the host's version string
        info["comfyui"] = ns.get("__version__")
    return info

