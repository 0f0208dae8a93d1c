"""The nodes' inputs, made from the engine's settings table (``zoodip.settings.SETTINGS``).

A widget's name, type, default, range and tooltip come from the table, so the node, the
command line, the checks and the node reference cannot disagree. What the pinned host
(v0.3.64, ``execution.validate_inputs``) does with a declaration decides how each is checked
when a prompt is queued:

- a number's ``min``/``max`` is checked by the host itself, and a failure is attached to that one
  input, quoting the user's value, unless the input is an argument of the node's
  ``validate_inputs`` (then the host leaves it entirely to the node);
- an error a node's ``validate_inputs`` returns is attached to *every* argument of it. So each
  node's ``validate_inputs`` takes only the inputs whose check the host cannot express (a name,
  a relation between two values, a float that must be finite and strictly inside its range),
  and never two unrelated ones;
- a combo's value is checked against its options only when its declared type is the list of
  options (``io.Combo`` declares "COMBO", which that host does not check): :class:`Choice`.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..zoodip.settings import SETTINGS, Setting

# the pack's own socket types (0.1.0 names: saved workflows refer to them)
Embedding = io.Custom("EMBEDDING")
Loss = io.Custom("ZOODIP_LOSS")
Puts = io.Custom("ZOODIP_PUTS")
Subspace = io.Custom("ZOODIP_SUBSPACE")


def tooltip(s: Setting) -> str:
    text = s.help
    if s.paper is not None:
        paper = s.paper_text()
        text += " " + paper[0].upper() + paper[1:] + "."
    return text


def widget(name: str, optional: bool = False) -> io.Input:
    """The node input of the setting ``name``, as the table declares it."""
    s = SETTINGS[name]
    common: dict[str, Any] = {"optional": optional, "tooltip": tooltip(s), "default": s.default}
    if s.kind is bool:
        inp = io.Boolean.Input(name, **common)
    elif s.kind is str:
        inp = io.String.Input(name, multiline=s.multiline, **common)
    elif s.kind is int:
        inp = io.Int.Input(name, min=s.min, max=s.max, step=s.step, **common)
    else:
        inp = io.Float.Input(name, min=s.min, max=s.max, step=s.step, round=s.extra.get("round"), **common)
    inp.zoodip_setting = s  # for the node reference (devtools/docs.py)
    return inp


class Choice(io.Combo.Input):
    """A combo whose declared type is its list of options, so the host checks the value when the
    prompt is queued (and attaches a bad one to this input), as it did for 0.1.0's list inputs."""

    def get_io_type(self):
        return list(self.options or [])


def check_inputs(**values: Any) -> bool | str:
    """For a node's ``validate_inputs``: True, or the first table check's message. A linked
    input arrives as None (its value is not known yet) and is checked when the node runs."""
    for name, value in values.items():
        if value is None:
            continue
        try:
            SETTINGS[name].check(value)
        except ValueError as e:
            return str(e)
    return True


def legacy(out: io.NodeOutput) -> Any:
    """A node's result in 0.1.0's shape (a tuple, or ``{"ui", "result"}``), for code that calls
    the node's old method (``train``, ``save``...) directly instead of ``execute``."""
    result = tuple(out.args)
    if out.ui is None:
        return result
    return {"ui": out.ui, "result": result}
