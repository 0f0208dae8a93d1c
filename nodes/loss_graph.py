"""Loss Graph: the ZOODIP_LOSS history as a picture, shown in the node and returned as IMAGE."""

from __future__ import annotations

import os
import random

import folder_paths
import numpy as np
import torch

from ..zoodip.plot import render_loss_plot


class ZOODiPLossGraph:
    CATEGORY = "ZOODiP"
    DESCRIPTION = "Plots a training run's clean loss per step (raw and smoothed) and its held-out loss."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_NODE = True
    FUNCTION = "plot"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "loss": ("ZOODIP_LOSS", {"tooltip": "The loss output of ZOODiP Train Token."}),
            },
            "optional": {
                "smoothing": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 0.999, "step": 0.01, "tooltip": "Weight of the moving average drawn over the noisy per-step loss (0 = none)."}),
            },
        }

    def plot(self, loss, smoothing: float = 0.9):
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
        return {"ui": {"images": [{"filename": file, "subfolder": sub, "type": "temp"}]}, "result": (image,)}
