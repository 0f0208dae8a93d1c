"""Loss Graph: the ZOODIP_LOSS history as a picture, shown in the node and returned as IMAGE."""

from __future__ import annotations

import os
import random

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..zoodip.plot import render_loss_plot
from ..zoodip.settings import check
from .common import check_links
from .schema import Loss, check_inputs, legacy, widget


class ZOODiPLossGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ZOODiPLossGraph",
            display_name="Loss Graph",
            category="ZOODiP",
            description="Plots a training run's clean loss per step (raw and smoothed) and its held-out loss.",
            inputs=[
                Loss.Input("loss", tooltip="The loss output of ZOODiP Train Token."),
                widget("smoothing", optional=True),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, smoothing=None):
        return check_inputs(smoothing=smoothing)  # finite and in range (a nan would pass the host's min/max)

    @classmethod
    def plot(cls, loss, smoothing: float = 0.9):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(loss, smoothing))

    @classmethod
    def execute(cls, loss, smoothing: float = 0.9) -> io.NodeOutput:
        check_links(loss=(loss, "ZOODIP_LOSS"))
        smoothing = check("smoothing", 0.9 if smoothing is None else smoothing)
        arr = render_loss_plot(
            list(loss.loss), list(loss.held_out), title=f"ZOODiP loss: {loss.token_name}", smoothing=smoothing
        )
        image = torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(0)
        # shown like PreviewImage: a file in the temp folder the UI fetches
        from PIL import Image

        out_dir = folder_paths.get_temp_directory()
        prefix = "zoodip_loss_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        full, name, counter, sub, _ = folder_paths.get_save_image_path(prefix, out_dir, arr.shape[1], arr.shape[0])
        file = f"{name}_{counter:05}_.png"
        Image.fromarray(arr).save(os.path.join(full, file))
        return io.NodeOutput(image, ui={"images": [{"filename": file, "subfolder": sub, "type": "temp"}]})
