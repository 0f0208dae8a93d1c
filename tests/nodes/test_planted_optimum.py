"""The loss goes down, with SG + PUTS on, on a problem whose optimum is known.

The target is the model's own prediction under a hidden token theta* (a "teacher"), so the loss
is exactly 0 at theta* and its held-out value (fixed images, noise and timesteps) must fall.
"""

from __future__ import annotations

import importlib

import torch


def test_held_out_loss_falls_with_sg_and_puts(host, loaded, photos):
    import nodes

    training = importlib.import_module(host.pack_module.__name__ + ".nodes.training")
    settings = importlib.import_module(host.pack_module.__name__ + ".zoodip.settings")
    model, clip, vae = loaded
    images = nodes.NODE_CLASS_MAPPINGS["ZOODiPLoadImages"]().load(photos, 64)[0]
    s = settings.TrainSettings(
        "planted", "dog", num_vectors=1, steps=80, learning_rate=5e-3, queries=2, perturbation=1e-3, seed=0,
        puts=settings.PUTSConfig(500, 900), subspace=settings.SubspaceConfig(16, 1e-3),
        prompt_templates="a photo of a {token}",
    )
    with torch.inference_mode():
        run = training.prepare(model, clip, vae, images, s)
        theta0 = run.trainer.theta.clone()
        run.loss_fn.teacher = theta0 + 0.02 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(1))
        training.train(run, held_out_every=40)
    (_, start), *_, (_, end) = run.history.held_out
    assert [k for k, _ in run.history.held_out] == [0, 40, 80]
    assert run.trainer.projector.refreshes == 5  # SG was active (80 / tau)
    assert end < 0.7 * start, run.history.held_out
