"""Thin ComfyUI adapters: input declarations, validation, and calls into the engine."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
