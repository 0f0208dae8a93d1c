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
ALL_CONCEPTS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)  # 20
# The held-out concept: its colour and its shape are the ones no caption names (--held-out COLOUR,SHAPE).
HELD_OUT = ("purple", "cross")


def parse_held_out(text: str) -> tuple[str, str]:
    """"COLOUR,SHAPE" (e.g. "purple,cross") -> (colour, shape); a clear error for anything else."""
    parts = tuple(x.strip().lower() for x in str(text).split(","))
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(
            f"--held-out must be COLOUR,SHAPE with a colour from {','.join(COLOUR_NAMES)} and a shape from "
            f"{','.join(SHAPES)}, e.g. purple,cross; got {text!r}"
        )
    return parts  # type: ignore[return-value]


def concepts(held_out: tuple[str, str] = HELD_OUT) -> tuple[tuple[str, str], ...]:
    """The concepts the toy set holds: the other colours x the other shapes (named), then the held-out one."""
    return tuple(
        (c, s) for c in COLOUR_NAMES for s in SHAPES if c != held_out[0] and s != held_out[1]
    ) + (tuple(held_out),)  # type: ignore[return-value]


CONCEPTS = concepts()
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


def caption_choices(concept: tuple[str, str], held_out: tuple[str, str] = HELD_OUT) -> list[tuple[str, float]]:
    """(caption, probability) for an image of `concept`; the held-out one gets no name."""
    if tuple(concept) == tuple(held_out):
        g = (1 - P_EMPTY_HELD_OUT) / len(GENERIC)
        return [(c, g) for c in GENERIC] + [(EMPTY, P_EMPTY_HELD_OUT)]
    named = (1 - P_GENERIC - P_EMPTY) / len(CAPTION_FORMS)
    return (
        [(caption(*concept, i), named) for i in range(len(CAPTION_FORMS))]
        + [(c, P_GENERIC / len(GENERIC)) for c in GENERIC]
        + [(EMPTY, P_EMPTY)]
    )


def all_captions(held_out: tuple[str, str] = HELD_OUT) -> list[str]:
    """Every caption the training ever uses (sorted, so the order is reproducible)."""
    return sorted({c for concept in concepts(held_out) for c, _ in caption_choices(concept, held_out)})


def words_named(held_out: tuple[str, str] = HELD_OUT) -> set[str]:
    return {w for c in all_captions(held_out) for w in c.split()}


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
    concept: np.ndarray  # N int (index into the `concepts` the set was made of)

    def __len__(self) -> int:
        return len(self.images)

    def floats(self) -> np.ndarray:
        """N,H,W,3 float32 in 0..1 (the host's IMAGE layout)."""
        return self.images.astype(np.float32) / 255.0


def make_set(per_concept: int, px: int, seed: int, concepts: tuple[tuple[str, str], ...] = CONCEPTS,
             weights: tuple[int, ...] | None = None) -> ShapeSet:
    """`per_concept` (times the concept's weight, default 1) images of each concept, interleaved.

    Image i of a concept depends on (seed, the concept, i) only, not on which other concepts the
    set holds: the same purple cross is drawn whatever the held-out concept is.
    """
    weights = weights or (1,) * len(concepts)
    imgs, col, shp, con = [], [], [], []
    for i in range(per_concept * max(weights)):
        for j, concept in enumerate(concepts):
            if i >= per_concept * weights[j]:
                continue
            rng = np.random.default_rng([seed, ALL_CONCEPTS.index(tuple(concept)), i])
            imgs.append(draw(*concept, px, rng))
            col.append(COLOUR_NAMES.index(concept[0]))
            shp.append(SHAPES.index(concept[1]))
            con.append(j)
    return ShapeSet(np.stack(imgs), np.array(col), np.array(shp), np.array(con))


def sample_captions(concept_ids: np.ndarray, rng: np.random.Generator, held_out: tuple[str, str] = HELD_OUT) -> list[str]:
    """One caption per image (concept ids index concepts(held_out)), drawn from its caption choices."""
    out = []
    table = concepts(held_out)
    for k in concept_ids:
        choices = caption_choices(table[int(k)], held_out)
        p = np.array([w for _, w in choices])
        out.append(choices[int(rng.choice(len(choices), p=p / p.sum()))][0])
    return out
