"""Thin ComfyUI adapters: input declarations, validation, and calls into the engine."""

from .config import PUTSSamplerConfig, SubspaceProjector
from .embeddings import ZOODiPApplyEmbedding, ZOODiPLoadEmbedding, ZOODiPSaveEmbedding
from .evaluate import ZOODiPEvaluate
from .images import ZOODiPLoadImages
from .loss_graph import ZOODiPLossGraph
from .quantize import ZOODiPQuantizeModel
from .train import ZOODiPTrainToken

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "ZOODiPTrainToken": ZOODiPTrainToken,
    "PUTSSamplerConfig": PUTSSamplerConfig,
    "SubspaceProjector": SubspaceProjector,
    "ZOODiPSaveEmbedding": ZOODiPSaveEmbedding,
    "ZOODiPLoadEmbedding": ZOODiPLoadEmbedding,
    "ZOODiPApplyEmbedding": ZOODiPApplyEmbedding,
    "ZOODiPLoadImages": ZOODiPLoadImages,
    "ZOODiPLossGraph": ZOODiPLossGraph,
    "ZOODiPEvaluate": ZOODiPEvaluate,
    "ZOODiPQuantizeModel": ZOODiPQuantizeModel,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "ZOODiPTrainToken": "ZOODiP Train Token",
    "PUTSSamplerConfig": "PUTS Sampler Config",
    "SubspaceProjector": "Subspace Projector",
    "ZOODiPSaveEmbedding": "Save Embedding",
    "ZOODiPLoadEmbedding": "Load Embedding",
    "ZOODiPApplyEmbedding": "Apply Embedding",
    "ZOODiPLoadImages": "Load Training Images",
    "ZOODiPLossGraph": "Loss Graph",
    "ZOODiPEvaluate": "Evaluate Token",
    "ZOODiPQuantizeModel": "Quantize Model",
}
