"""Thin ComfyUI adapters: the nodes' schemas (comfy_api io.ComfyNode), validation, and calls into the engine."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .config import PUTSSamplerConfig, SubspaceProjector
from .embeddings import ZOODiPApplyEmbedding, ZOODiPLoadEmbedding, ZOODiPSaveEmbedding
from .evaluate import ZOODiPEvaluate
from .images import ZOODiPLoadImages
from .loss_graph import ZOODiPLossGraph
from .quantize import ZOODiPQuantizeModel
from .train import ZOODiPTrainToken

# the order of the node menu
NODES: list[type[io.ComfyNode]] = [
    ZOODiPTrainToken,
    PUTSSamplerConfig,
    SubspaceProjector,
    ZOODiPSaveEmbedding,
    ZOODiPLoadEmbedding,
    ZOODiPApplyEmbedding,
    ZOODiPLoadImages,
    ZOODiPLossGraph,
    ZOODiPEvaluate,
    ZOODiPQuantizeModel,
]


def node_classes() -> dict[str, type[io.ComfyNode]]:
    """node id -> class, as the host registers them."""
    return {cls.GET_SCHEMA().node_id: cls for cls in NODES}


def display_names() -> dict[str, str]:
    return {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA().display_name for cls in NODES}


class ZOODiPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
