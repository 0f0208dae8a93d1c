"""Embedding files: refused when they hold no usable token (with the file name and what to do),
the oldest .pt format read without running code, and saves that write both files or neither."""

from __future__ import annotations

import errno
import math
import os

import pytest
import torch
from safetensors.torch import save_file

from zoodip import embedding as emb_io
from zoodip import files
from zoodip.embedding import Embedding


def _st(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# --- what a file must hold ------------------------------------------------------------------------


@pytest.mark.parametrize("tensor,words", [
    (torch.full((1, 768), math.nan), "holds NaN or infinite values: it is damaged"),
    (torch.tensor([[math.inf] + [0.0] * 767]), "holds NaN or infinite values"),
    (torch.full((1, 768), 2e9), "holds values up to 2e+09, far beyond any real token"),
    (torch.zeros(0, 768), "holds no vectors (shape (0, 768))"),
    (torch.zeros(1, 4, 768), "shape (1, 4, 768); an embedding is (vectors, width)"),
    (torch.zeros(2, 768, dtype=torch.int32), "does not hold float token vectors"),
])
def test_unusable_safetensors_are_refused_naming_the_file(tmp_path, tensor, words):
    path = _st(tmp_path / "bad-token.safetensors", emb_params=tensor)
    with pytest.raises(ValueError) as e:
        emb_io.load(path)
    assert str(e.value).startswith("bad-token.safetensors")
    assert words in str(e.value)
    assert "num_vectors to 0" not in str(e.value)


def test_half_precision_inf_and_sdxl_mismatch_are_refused(tmp_path):
    fp16 = _st(tmp_path / "h.safetensors", emb_params=torch.full((1, 768), math.inf, dtype=torch.float16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        emb_io.load(fp16)
    sdxl = _st(tmp_path / "x.safetensors", clip_l=torch.zeros(2, 768), clip_g=torch.zeros(3, 1280))
    with pytest.raises(ValueError, match=r"different number of vectors per text encoder \(\[2, 3\]\)"):
        emb_io.load(sdxl)
    nan_g = _st(tmp_path / "g.safetensors", clip_l=torch.zeros(1, 768), clip_g=torch.full((1, 1280), math.nan))
    with pytest.raises(ValueError, match=r"g.safetensors \(clip_g\) holds NaN"):
        emb_io.load(nan_g)


def test_a_good_file_still_loads(tmp_path):
    v = torch.randn(2, 768) * 0.02
    emb = emb_io.load(_st(tmp_path / "good.safetensors", emb_params=v))
    assert torch.equal(emb.vectors[emb_io.SINGLE], v) and emb.num_vectors == 2


def test_truncated_safetensors_names_the_file(tmp_path):
    path = _st(tmp_path / "cut.safetensors", emb_params=torch.zeros(4, 768))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        emb_io.load(path)
    assert str(e.value).startswith("cut.safetensors is not a readable safetensors file (")
    assert "truncated or damaged; download or save it again" in str(e.value)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        emb_io.load(tmp_path / "junk.safetensors")


# --- .pt files --------------------------------------------------------------------------------------


def test_oldest_pt_format_with_a_parameter_dict_is_read_without_running_code(tmp_path):
    v = torch.randn(2, 768)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(v.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params, "name": "old", "step": 3000},
               tmp_path / "old.pt")
    # weights_only alone refuses the file: the class is not among the allowed ones
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt") == [
        "torch.nn.modules.container.ParameterDict"]
    allowed = {repr(g) for g in torch.serialization.get_safe_globals()}
    emb = emb_io.load(tmp_path / "old.pt")
    assert torch.equal(emb.vectors[emb_io.SINGLE], v)
    assert {repr(g) for g in torch.serialization.get_safe_globals()} == allowed  # the allowance was only for that read


def test_a1111_pt_format_is_read(tmp_path):
    v = torch.randn(3, 768)
    torch.save({"string_to_param": {"*": v}, "name": "a1111"}, tmp_path / "a.pt")
    assert torch.equal(emb_io.load(tmp_path / "a.pt").vectors[emb_io.SINGLE], v)


class _Evil:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_without_torch_advice(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 768))}),
                "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as e:
        emb_io.load(tmp_path / "evil.pt")
    msg = str(e.value)
    assert msg.startswith("evil.pt could not be read safely (weights_only): it needs io.open to load, which could run code")
    assert "weights_only=False" not in msg and "use a .safetensors version" in msg
    assert not _Evil.marker.exists()


def test_pt_with_nan_is_refused(tmp_path):
    torch.save({"string_to_param": {"*": torch.full((1, 768), math.nan)}}, tmp_path / "n.pt")
    with pytest.raises(ValueError, match="n.pt holds NaN"):
        emb_io.load(tmp_path / "n.pt")


# --- saves: both files or neither ------------------------------------------------------------------


def _emb(value: float = 1.0) -> Embedding:
    theta = torch.full((1, 768), value)
    return Embedding("tok", {"l": theta.clone()}, state={"theta": theta, "step": 1})


def _full_disk_on_second_file(monkeypatch):
    real = files._write_temp
    calls = []

    def writer(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path.parent / ".tmpXYZ.tmp"))
        return real(path, data)

    monkeypatch.setattr(files, "_write_temp", writer)
    return calls


def test_disk_full_on_the_state_leaves_nothing_and_a_retry_works(tmp_path, monkeypatch):
    target = tmp_path / "tok.safetensors"
    calls = _full_disk_on_second_file(monkeypatch)
    with pytest.raises(OSError) as e:
        emb_io.save_with_state(_emb(), target)
    msg = str(e.value)
    assert len(calls) == 2 and e.value.errno == errno.ENOSPC
    assert msg.startswith(f"could not write {emb_io.state_path(target)}: the disk holding {tmp_path} is full")
    assert "free some space" in msg and "Nothing was written" in msg and ".tmp" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no embedding without its state, no temp files
    monkeypatch.undo()
    emb_io.save_with_state(_emb(), target)  # the retry is not refused as "already exists"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.safetensors", "tok.zoodip-state"]


def test_failure_when_moving_the_second_file_undoes_the_first_and_restores_a_replaced_one(tmp_path, monkeypatch):
    target = tmp_path / "tok.safetensors"
    emb_io.save_with_state(_emb(1.0), target)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = files._publish
    calls = []

    def publish(tmp, path, overwrite):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(tmp, path, overwrite)

    monkeypatch.setattr(files, "_publish", publish)
    with pytest.raises(OSError, match="could not write .*tok.zoodip-state"):
        emb_io.save_with_state(_emb(2.0), target, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old pair, untouched


def test_read_only_folder_error_names_the_target(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(OSError) as e:
            emb_io.save_with_state(_emb(), folder / "tok.safetensors")
        assert str(e.value).startswith(f"could not write {folder / 'tok.safetensors'}: the folder {folder} is not writable")
        assert ".tmp" not in str(e.value)
    finally:
        os.chmod(folder, 0o700)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_folder_error_names_the_target_not_the_temp_file(tmp_path, monkeypatch, code):
    def writer(path, data):  # what mkstemp raises there: the OS names the temp file
        raise OSError(code, os.strerror(code), str(path.parent / f".{path.name}.abc123.tmp"))

    monkeypatch.setattr(files, "_write_temp", writer)
    with pytest.raises(OSError) as e:
        emb_io.save_with_state(_emb(), tmp_path / "tok.safetensors")
    assert str(e.value).startswith(f"could not write {tmp_path / 'tok.safetensors'}: the folder {tmp_path} is not writable")
    assert "abc123" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_existing_embedding_is_never_replaced_and_its_state_stays(tmp_path):
    target = tmp_path / "tok.safetensors"
    emb_io.save_with_state(_emb(1.0), target)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        emb_io.save_with_state(_emb(2.0), target)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_orphan_state_is_replaced_or_removed_with_a_new_embedding(tmp_path):
    target = tmp_path / "tok.safetensors"
    orphan = emb_io.state_path(target)
    orphan.write_bytes(b"left over from a crashed save")
    emb_io.save_with_state(_emb(3.0), target)
    assert emb_io.state_from_bytes(orphan.read_bytes())["theta"][0, 0] == 3.0
    target.unlink()
    emb_io.save_with_state(Embedding("tok", {"l": torch.zeros(1, 768)}), target)
    assert not orphan.exists()
    with pytest.raises(FileExistsError):  # snapshots: nothing is replaced, not even a state
        orphan.write_bytes(b"x")
        target.unlink()
        emb_io.save_with_state(_emb(), target, state_overwrite=False)
    assert not target.exists()


def test_a_non_finite_token_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        emb_io.save_with_state(Embedding("tok", {"l": torch.full((1, 768), math.nan)}), tmp_path / "t.safetensors")
    assert not list(tmp_path.iterdir())


def test_a_model_in_the_embeddings_folder_is_refused_without_reading_it_whole(tmp_path):
    many = {f"model.layer{i}.weight": torch.zeros(4, 4) for i in range(40)}
    path = _st(tmp_path / "checkpoint.safetensors", **many)
    with pytest.raises(ValueError, match="checkpoint.safetensors holds 40 tensors and no embedding key .* looks like a model"):
        emb_io.load(path)
    # a few unnamed tensors (other tools' formats): the first (vectors, width) one, as the host reads it
    v = torch.randn(2, 768)
    assert torch.equal(emb_io.load(_st(tmp_path / "other.safetensors", a=v, b=torch.zeros(3))).vectors[emb_io.SINGLE], v)
