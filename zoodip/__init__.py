"""ZOODiP engine: forward-only textual inversion (arXiv 2503.14868) in plain torch.

The pieces are independent small objects, wired together by a trainer:
``RandomGradientEstimator`` -> ``SubspaceProjector`` -> ``torch.optim.Adam`` (``paper_adam``), on the loss a host supplies
(``DenoisingLoss`` for diffusion models), with timesteps from ``PUTSSampler``.
Nothing here imports ComfyUI.
"""

from .embedding import Embedding
from .estimator import RandomGradientEstimator
from .loss import DenoisingLoss, held_out_loss
from .optim import paper_adam
from .projector import SubspaceProjector
from .settings import PUTSConfig, SubspaceConfig, TrainSettings
from .timesteps import PUTSSampler
from .trainer import NonFiniteLossError, StepResult, ZOTrainer

__all__ = [
    "DenoisingLoss",
    "Embedding",
    "NonFiniteLossError",
    "PUTSConfig",
    "PUTSSampler",
    "RandomGradientEstimator",
    "StepResult",
    "SubspaceConfig",
    "SubspaceProjector",
    "TrainSettings",
    "ZOTrainer",
    "held_out_loss",
    "paper_adam",
]
