"""ZOODiP for ComfyUI: forward-only textual inversion on the checkpoint already loaded in the graph.

The host loads the nodes through ``comfy_entrypoint`` (its nodes.py ``load_custom_node``); the
pack defines no NODE_CLASS_MAPPINGS, which that loader would take instead. ``WEB_DIRECTORY``
(the help pages) is read either way.
"""

WEB_DIRECTORY = "./web"

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:
    # Imported outside the host, e.g. when pytest collects the repository as a package: the
    # engine (zoodip/) is usable on its own, the nodes are not.
    pass
else:
    from .nodes import ZOODiPExtension

    async def comfy_entrypoint() -> ZOODiPExtension:
        return ZOODiPExtension()

