"""The headless harness really runs ComfyUI: core nodes execute, write files into the temp
tree, validation stops bad prompts, progress/cancel/errors come back, and the pack loads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.host import HeadlessHost, Message, load_api_workflow


def invert_prompt(width: int = 8, prefix: str = "harness") -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 4, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": prefix},
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


class _Steps:
    """Test-only node: reports progress each step, optionally fails at a step."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": ("INT", {"default": 3, "min": 1, "max": 100}),
                "fail_at": ("INT", {"default": -1, "min": -1, "max": 100}),
            }
        }

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, steps: int, fail_at: int) -> dict[str, Any]:
        import comfy.utils

        bar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            if i == fail_at:
                raise ValueError(f"boom at step {i}")
            bar.update_absolute(i + 1, steps)
        return {"ui": {"text": [f"{steps} steps"]}, "result": (steps,)}


@pytest.fixture
def steps_node(host: HeadlessHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(host.node_class_mappings, "ZoodipTestSteps", _Steps)
    yield "ZoodipTestSteps"


def test_core_prompt_runs_and_writes_into_temp_tree(host: HeadlessHost) -> None:
    shared_output = host.host_root / "output" if host.host_root else None
    before = (
        sorted(shared_output.iterdir())
        if shared_output and shared_output.is_dir()
        else []
    )

    result = host.run_prompt(invert_prompt(), fresh_cache=True)

    assert result.ok, result.errors
    assert not result.interrupted
    saved = result.ui["3"]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    saved_file = host.output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert saved_file.is_file() and saved_file.stat().st_size > 0
    preview = result.ui["4"]["images"][0]
    assert preview["type"] == "temp"
    assert (host.temp_dir / preview["subfolder"] / preview["filename"]).is_file()
    # Result values come from the executor's cache: black image inverted is all ones.
    image = result.value("2")
    assert tuple(image.shape) == (1, 4, 8, 3)
    assert float(image.min()) == 1.0
    assert result.outputs["3"].ui == result.ui["3"]
    assert set(result.executed) == {"1", "2", "3", "4"}
    names = [m.event for m in result.messages]
    for event in (
        "execution_start",
        "execution_cached",
        "executing",
        "executed",
        "execution_success",
    ):
        assert event in names
    # The host's own tree is untouched.
    if shared_output is not None:
        assert (
            sorted(shared_output.iterdir()) if shared_output.is_dir() else []
        ) == before


def test_all_core_nodes_imported(host: HeadlessHost) -> None:
    # A failed comfy_extras import means the venv lacks a host dependency.
    assert host.core_import_failures == []
    assert {"EmptyImage", "SaveImage", "KSampler", "CheckpointLoaderSimple"} <= set(
        host.node_class_mappings
    )


def test_nodes_reach_the_client_through_prompt_server(host: HeadlessHost) -> None:
    import server

    assert server.PromptServer.instance is host.server
    result = host.run_prompt(
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 5, "height": 3, "batch_size": 2, "color": 0},
            },
            "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        }
    )
    assert result.ok, result.errors
    assert result.outputs["2"].result == [[5], [3], [2]]
    assert result.events("progress_text") == [
        {"node": "2", "text": "width: 5, height: 3\n batch size: 2"}
    ]
    assert result.ui["3"] == {"text": ["5"]}


def test_model_folders_are_only_the_temp_tree(host: HeadlessHost) -> None:
    import folder_paths

    for kind in (
        "checkpoints",
        "embeddings",
        "vae",
        "clip",
        "unet",
        "loras",
        "custom_nodes",
    ):
        paths = folder_paths.get_folder_paths(kind)
        assert paths, kind
        for p in paths:
            assert Path(p).is_relative_to(host.base), (kind, p)
    assert Path(folder_paths.get_output_directory()) == host.output_dir
    assert Path(folder_paths.get_temp_directory()) == host.temp_dir
    assert Path(folder_paths.get_input_directory()) == host.input_dir
    assert Path(folder_paths.get_user_directory()) == host.user_dir
    assert host.model_dir("embeddings").is_dir()


def test_cache_persists_between_prompts_unless_fresh(host: HeadlessHost) -> None:
    prompt = invert_prompt(width=6, prefix="cache")
    first = host.run_prompt(prompt, fresh_cache=True)
    assert first.ok, first.errors
    again = host.run_prompt(prompt)
    assert again.ok, again.errors
    assert {"1", "2"} <= set(again.cached)
    assert "1" not in again.executed
    assert again.value("2") is not None  # cached values are still reported
    fresh = host.run_prompt(prompt, fresh_cache=True)
    assert "1" in fresh.executed and not fresh.cached


def test_validation_failure_executes_nothing(host: HeadlessHost) -> None:
    files_before = host.output_files()
    prompt = invert_prompt(width=0, prefix="never")

    errors = host.validate(prompt)
    result = host.run_prompt(prompt)

    assert not result.ok
    assert result.errors == errors
    assert any(
        e["node_id"] == "1" and e["type"] == "value_smaller_than_min" for e in errors
    ), errors
    assert all(e["message"] for e in errors)
    assert result.messages == [] and result.executed == [] and result.outputs == {}
    assert host.output_files() == files_before


def test_unknown_node_is_a_validation_error(host: HeadlessHost) -> None:
    errors = host.validate({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert errors and errors[0]["type"] == "invalid_prompt"


def test_progress_events_and_execution_error(
    host: HeadlessHost, steps_node: str
) -> None:
    good = host.run_prompt(
        {"1": {"class_type": steps_node, "inputs": {"steps": 3, "fail_at": -1}}}
    )
    assert good.ok, good.errors
    assert [p["value"] for p in good.events("progress")] == [1, 2, 3]
    assert all(p["node"] == "1" for p in good.events("progress"))
    assert good.ui["1"] == {"text": ["3 steps"]}
    assert good.value("1") == 3

    bad = host.run_prompt(
        {"1": {"class_type": steps_node, "inputs": {"steps": 3, "fail_at": 1}}}
    )
    assert not bad.ok and not bad.interrupted
    assert len(bad.errors) == 1
    err = bad.errors[0]
    assert err["node_id"] == "1" and err["type"] == "execution_error"
    assert err["message"] == "boom at step 1" and err["exception_type"] == "ValueError"


def test_interrupt_from_a_progress_callback(
    host: HeadlessHost, steps_node: str
) -> None:
    def cancel_at_step_two(message: Message) -> None:
        if message.event == "progress" and message.data["value"] == 2:
            host.interrupt()

    result = host.run_prompt(
        {"1": {"class_type": steps_node, "inputs": {"steps": 10, "fail_at": -1}}},
        on_message=cancel_at_step_two,
    )
    assert result.interrupted and not result.ok
    assert result.errors == []
    # The flag is checked at the next progress tick, as in the app.
    assert [p["value"] for p in result.events("progress")] == [1, 2]
    assert "execution_interrupted" in [m.event for m in result.messages]
    after = host.run_prompt(
        {"1": {"class_type": steps_node, "inputs": {"steps": 2, "fail_at": -1}}}
    )
    assert after.ok, "a new prompt starts un-interrupted"


def test_pack_loaded_and_registered(host: HeadlessHost) -> None:
    pack = host.pack_module
    assert pack is not None, "the pack did not load"
    assert Path(pack.__file__).resolve() == (host.pack_root / "__init__.py").resolve()
    # registered through comfy_entrypoint (io.ComfyNode schemas); a NODE_CLASS_MAPPINGS would
    # make the host's loader skip the entrypoint
    assert getattr(pack, "NODE_CLASS_MAPPINGS", None) is None
    assert callable(getattr(pack, "comfy_entrypoint", None))
    mappings = pack.nodes.node_classes()
    assert len(mappings) == 10
    import nodes

    for name, cls in mappings.items():
        assert host.node_class_mappings.get(name) is cls, (
            f"{name} not registered by the host"
        )
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.comfyui-zoodip"
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name] == pack.nodes.display_names()[name]


def test_load_api_workflow(tmp_path: Path) -> None:
    import json

    api = tmp_path / "api.json"
    api.write_text(json.dumps(invert_prompt()))
    assert load_api_workflow(api) == invert_prompt()
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": invert_prompt()}))
    assert load_api_workflow(wrapped) == invert_prompt()
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(ValueError, match="UI-format"):
        load_api_workflow(ui)
