"""PUTS Sampler Config and Subspace Projector: settings objects for Train Token."""

from __future__ import annotations

from comfy_api.latest import io

from ..zoodip.settings import PUTSConfig, SubspaceConfig
from .schema import Puts, Subspace, check_inputs, legacy, widget


class PUTSSamplerConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PUTSSamplerConfig",
            display_name="PUTS Sampler Config",
            category="ZOODiP",
            description=(
                "Partial Uniform Timestep Sampling: train only on timesteps in [t_min, t_max) of the model's "
                "training timesteps, the band where noisy zeroth-order estimates carry signal about the concept."
            ),
            inputs=[widget("t_min"), widget("t_max")],
            outputs=[Puts.Output(display_name="puts")],
        )

    @classmethod
    def validate_inputs(cls, t_min, t_max):
        # t_min < t_max concerns both; each one's range is checked here too, as the host skips it
        # for arguments of this function
        ok = check_inputs(t_min=t_min, t_max=t_max)
        if ok is not True or t_min is None or t_max is None:  # a linked value is checked when the node runs
            return ok
        try:
            PUTSConfig(int(t_min), int(t_max)).validate()
        except (ValueError, TypeError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, t_min: int, t_max: int) -> io.NodeOutput:
        cfg = PUTSConfig(t_min, t_max)
        cfg.validate()
        return io.NodeOutput(cfg)

    @classmethod
    def make(cls, t_min: int, t_max: int):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(t_min, t_max))


class SubspaceProjector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SubspaceProjector",
            display_name="Subspace Projector",
            category="ZOODiP",
            description=(
                "Subspace Gradient: every tau steps, find the low-variance directions of the token's recent "
                "trajectory and remove them from each zeroth-order gradient estimate (they are mostly noise)."
            ),
            inputs=[widget("tau"), widget("nu")],
            outputs=[Subspace.Output(display_name="subspace")],
        )

    @classmethod
    def validate_inputs(cls, nu):
        # nu only: strictly inside (0, 1) and finite, which the host's min/max check cannot say;
        # tau's range is the host's check, attached to tau
        return check_inputs(nu=nu)

    @classmethod
    def execute(cls, tau: int, nu: float) -> io.NodeOutput:
        cfg = SubspaceConfig(tau, nu)
        cfg.validate()
        return io.NodeOutput(cfg)

    @classmethod
    def make(cls, tau: int, nu: float):  # 0.1.0's method, for scripts that call the node directly
        return legacy(cls.execute(tau, nu))
