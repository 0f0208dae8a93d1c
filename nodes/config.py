"""PUTS Sampler Config and Subspace Projector: settings objects for Train Token."""

from __future__ import annotations

from ..zoodip.settings import PUTSConfig, SubspaceConfig


class PUTSSamplerConfig:
    CATEGORY = "ZOODiP"
    DESCRIPTION = (
        "Partial Uniform Timestep Sampling: train only on timesteps in [t_min, t_max) of the model's "
        "training timesteps, the band where noisy zeroth-order estimates carry signal about the concept."
    )
    RETURN_TYPES = ("ZOODIP_PUTS",)
    RETURN_NAMES = ("puts",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "t_min": ("INT", {"default": 500, "min": 0, "max": 999, "tooltip": "Lowest training timestep sampled (paper: 500 of 1000). Small t carries little about the concept."}),
                "t_max": ("INT", {"default": 900, "min": 1, "max": 1000, "tooltip": "Timesteps are drawn below this (paper: 900; 700 for SDXL). Large t is nearly pure noise."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, t_min, t_max):
        try:
            PUTSConfig(int(t_min), int(t_max)).validate()
        except (ValueError, TypeError) as e:
            return str(e)
        return True

    def make(self, t_min: int, t_max: int):
        cfg = PUTSConfig(t_min, t_max)
        cfg.validate()
        return (cfg,)


class SubspaceProjector:
    CATEGORY = "ZOODiP"
    DESCRIPTION = (
        "Subspace Gradient: every tau steps, find the low-variance directions of the token's recent "
        "trajectory and remove them from each zeroth-order gradient estimate (they are mostly noise)."
    )
    RETURN_TYPES = ("ZOODIP_SUBSPACE",)
    RETURN_NAMES = ("subspace",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tau": ("INT", {"default": 128, "min": 2, "max": 4096, "tooltip": "Trajectory points per SVD, and steps between refreshes (paper: 128)."}),
                "nu": ("FLOAT", {"default": 1e-3, "min": 0.0, "max": 1.0, "step": 1e-4, "round": False, "tooltip": "Variance fraction treated as noise: directions beyond 1 - nu of explained variance are projected out (paper: 1e-3)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tau, nu):
        try:
            SubspaceConfig(int(tau), float(nu)).validate()
        except (ValueError, TypeError) as e:
            return str(e)
        return True

    def make(self, tau: int, nu: float):
        cfg = SubspaceConfig(tau, nu)
        cfg.validate()
        return (cfg,)
