"""The synthetic captioned image set: coloured shapes on a white background.

Deterministic: image i of a set with seed s is a function of (s, i) only. One concept, the
held-out one (HELD_OUT: a purple cross), is in the images but never named in any caption: its
images are captioned only with the generic captions, so the model can draw it but no word of the
caption vocabulary asks for it. That is what textual inversion has to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 225),
    "yellow": (235, 200, 30),
    "purple": (150, 50, 190),
}
COLOUR_NAMES = tuple(COLOURS)
TRAINED_SHAPES = ("circle", "square", "triangle")
TRAINED_COLOURS = ("red", "green", "blue", "yellow")
HELD_OUT = ("purple", "cross")
# every (colour, shape) the set contains; the held-out one is last
CONCEPTS: tuple[tuple[str, str], ...] = tuple((c, s) for c in TRAINED_COLOURS for s in TRAINED_SHAPES) + (HELD_OUT,)
TRAINED = CONCEPTS[:-1]

# Where a token for the held-out concept starts: a word no caption uses (the random CLIP still maps
# it to a definite conditioning) that draws no purple cross. The class word "shape" is the usual
# choice in TI, but here its generic caption is what the held-out images were captioned with, so
# it already draws the concept most of the time and would leave a token little to learn.
TOKEN_INIT_WORD = "object"

CAPTION_FORMS = ("a {colour} {shape}", "a photo of a {colour} {shape}")
GENERIC = ("a shape", "a photo of a shape")
EMPTY = ""
# share of a trained image's captions that are generic / empty (the empty one is what CFG's
# negative prompt "" asks for, as in SD's caption dropout)
P_GENERIC = 0.1
P_EMPTY = 0.1
P_EMPTY_HELD_OUT = 0.3


def caption(colour: str, shape: str, form: int = 0) -> str:
    return CAPTION_FORMS[form].format(colour=colour, shape=shape)


def caption_choices(concept: tuple[str, str]) -> list[tuple[str, float]]:
    """(caption, probability) for an image of `concept`; the held-out one gets no name."""
    if concept == HELD_OUT:
        g = (1 - P_EMPTY_HELD_OUT) / len(GENERIC)
        return [(c, g) for c in GENERIC] + [(EMPTY, P_EMPTY_HELD_OUT)]
    named = (1 - P_GENERIC - P_EMPTY) / len(CAPTION_FORMS)
    return (
        [(caption(*concept, i), named) for i in range(len(CAPTION_FORMS))]
        + [(c, P_GENERIC / len(GENERIC)) for c in GENERIC]
        + [(EMPTY, P_EMPTY)]
    )


def all_captions() -> list[str]:
    """Every caption the training ever uses (sorted, so the order is reproducible)."""
    return sorted({c for concept in CONCEPTS for c, _ in caption_choices(concept)})


def words_named() -> set[str]:
    return {w for c in all_captions() for w in c.split()}


def draw(colour: str, shape: str, px: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image; size, position and shade jitter from `rng`."""
    ss = 4  # supersampled then downsampled: antialiased edges
    big = px * ss
    img = Image.new("RGB", (big, big), (255, 255, 255))
    d = ImageDraw.Draw(img)
    r = big * rng.uniform(0.25, 0.34)  # half-size: the shape spans half to two thirds of the image
    cx = big / 2 + rng.uniform(-0.1, 0.1) * big
    cy = big / 2 + rng.uniform(-0.1, 0.1) * big
    shade = rng.uniform(0.9, 1.05)
    fill = tuple(int(min(255, v * shade)) for v in COLOURS[colour])
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        q = r * 0.88
        d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.36
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(img.resize((px, px), Image.Resampling.LANCZOS), dtype=np.uint8)


@dataclass
class ShapeSet:
    images: np.ndarray  # N,H,W,3 uint8
    colour: np.ndarray  # N int (index into COLOUR_NAMES)
    shape: np.ndarray  # N int (index into SHAPES)
    concept: np.ndarray  # N int (index into CONCEPTS)

    def __len__(self) -> int:
        return len(self.images)

    def floats(self) -> np.ndarray:
        """N,H,W,3 float32 in 0..1 (the host's IMAGE layout)."""
        return self.images.astype(np.float32) / 255.0


def make_set(per_concept: int, px: int, seed: int, concepts: tuple[tuple[str, str], ...] = CONCEPTS) -> ShapeSet:
    """`per_concept` images of each concept, interleaved (concept-major order within a round)."""
    imgs, col, shp, con = [], [], [], []
    for i in range(per_concept):
        for concept in concepts:
            k = CONCEPTS.index(concept)
            rng = np.random.default_rng([seed, k, i])
            imgs.append(draw(*concept, px, rng))
            col.append(COLOUR_NAMES.index(concept[0]))
            shp.append(SHAPES.index(concept[1]))
            con.append(k)
    return ShapeSet(np.stack(imgs), np.array(col), np.array(shp), np.array(con))


def sample_captions(concept_ids: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One caption per image, drawn from its concept's caption choices."""
    out = []
    for k in concept_ids:
        choices = caption_choices(CONCEPTS[int(k)])
        p = np.array([w for _, w in choices])
        out.append(choices[int(rng.choice(len(choices), p=p / p.sum()))][0])
    return out
