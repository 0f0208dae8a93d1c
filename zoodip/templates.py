"""Prompt templates for the token: the usual textual-inversion object templates."""

from __future__ import annotations

PLACEHOLDER = "{token}"

# The object templates textual-inversion tools use (same wording family as A1111/diffusers).
OBJECT_TEMPLATES = [
    "a photo of a {token}",
    "a rendering of a {token}",
    "a cropped photo of the {token}",
    "the photo of a {token}",
    "a photo of a clean {token}",
    "a photo of a dirty {token}",
    "a dark photo of the {token}",
    "a photo of my {token}",
    "a photo of the cool {token}",
    "a close-up photo of a {token}",
    "a bright photo of the {token}",
    "a cropped photo of a {token}",
    "a photo of the {token}",
    "a good photo of the {token}",
    "a photo of one {token}",
    "a close-up photo of the {token}",
    "a rendition of the {token}",
    "a photo of the clean {token}",
    "a rendition of a {token}",
    "a photo of a nice {token}",
    "a good photo of a {token}",
    "a photo of the nice {token}",
    "a photo of the small {token}",
    "a photo of the weird {token}",
    "a photo of the large {token}",
    "a photo of a cool {token}",
    "a photo of a small {token}",
]

DEFAULT_TEMPLATES_TEXT = "\n".join(OBJECT_TEMPLATES)


def parse_templates(text: str | None) -> list[str]:
    """One template per non-empty line, each with exactly one ``{token}``; empty text = the defaults."""
    if text is None or not text.strip():
        return list(OBJECT_TEMPLATES)
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        n = line.count(PLACEHOLDER)
        if n != 1:
            raise ValueError(
                f"prompt_templates line {i} ({line!r}) has {n} '{PLACEHOLDER}' placeholders: "
                f"each line needs exactly one, e.g. 'a photo of a {PLACEHOLDER}'"
            )
        out.append(line)
    if not out:
        raise ValueError("prompt_templates has no templates: write one per line, e.g. 'a photo of a {token}'")
    return out
