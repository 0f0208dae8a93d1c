"""API prompts the node tests queue (built in code so each test can change what it needs)."""

from __future__ import annotations


def train_prompt(ckpt: str, photos: str, token: str = "tok", steps: int = 6, **train_overrides) -> dict:
    train = {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0],
        "token_name": token, "init_word": "dog", "num_vectors": 2, "steps": steps,
        "learning_rate": 5e-3, "queries": 2, "perturbation": 1e-3, "seed": 0,
        "puts": ["3", 0], "subspace": ["4", 0], "prompt_templates": "a photo of a {token}\na {token}",
    }
    train.update(train_overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "ZOODiPLoadImages", "inputs": {"folder": photos, "resolution": 64}},
        "3": {"class_type": "PUTSSamplerConfig", "inputs": {"t_min": 500, "t_max": 900}},
        "4": {"class_type": "SubspaceProjector", "inputs": {"tau": 4, "nu": 1e-3}},
        "5": {"class_type": "ZOODiPTrainToken", "inputs": train},
    }


def sample_nodes(clip_ref: list, model_ref: list, vae_ref: list, text: str, first_id: int = 10) -> dict:
    i = first_id
    return {
        str(i): {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": text}},
        str(i + 1): {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": ""}},
        str(i + 2): {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        str(i + 3): {"class_type": "KSampler", "inputs": {
            "model": model_ref, "positive": [str(i), 0], "negative": [str(i + 1), 0], "latent_image": [str(i + 2), 0],
            "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        str(i + 4): {"class_type": "VAEDecode", "inputs": {"samples": [str(i + 3), 0], "vae": vae_ref}},
        str(i + 5): {"class_type": "SaveImage", "inputs": {"images": [str(i + 4), 0], "filename_prefix": "zoodip-test"}},
    }
