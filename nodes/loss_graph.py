"""Loss Graph: the ZOODIP_LOSS history as a picture, shown in the node and returned as IMAGE."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..zoodip.plot import render_loss_plot
from ..zoodip.settings import SETTINGS, check
from .common import check_links, temp_image
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
    def plot(cls, loss, smoothing: float = SETTINGS["smoothing"].default):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(loss, smoothing))

    @classmethod
    def execute(cls, loss, smoothing: float = SETTINGS["smoothing"].default) -> io.NodeOutput:
        check_links(loss=(loss, "ZOODIP_LOSS"))
        smoothing = check("smoothing", SETTINGS["smoothing"].default if smoothing is None else smoothing)
        arr = render_loss_plot(
            list(loss.loss), list(loss.held_out), title=f"ZOODiP loss: {loss.token_name}", smoothing=smoothing
        )
        image = torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(0)
        return io.NodeOutput(image, ui={"images": [temp_image(Image.fromarray(arr), "zoodip_loss_")]})
