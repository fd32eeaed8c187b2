import json

import pytest
import torch
from safetensors.torch import save_file

from hyvideo.checkpoints.common import (
    CheckpointError,
    as_state_dict,
    assign_state_dict,
    check_state_dict,
    load_safetensors,
    load_safetensors_dir,
    load_torch_file,
)


def test_pickle_payload_is_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"module": {"w": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_torch_file(path)
    assert not marker.exists()


def test_truncated_files_are_clear_errors(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"w\.pt"):
        load_torch_file(path)
    st = tmp_path / "w.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match=r"w\.safetensors"):
        load_safetensors(st)


def test_state_dict_selection(tmp_path):
    sd = {"a": torch.zeros(1)}
    assert as_state_dict({"module": sd}, "f", "module") == sd
    assert as_state_dict(sd, "f", "module") == sd
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        as_state_dict({"module": sd}, "f", "ema")
    with pytest.raises(CheckpointError, match="state dict"):
        as_state_dict([1, 2], "f")


def test_strict_assign_names_keys_and_shapes():
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match=r"missing keys 1: bias"):
        assign_state_dict(model, {"weight": torch.zeros(3, 4)}, "lin")
    with pytest.raises(CheckpointError, match=r"unexpected keys 1: extra"):
        assign_state_dict(model, {"weight": torch.zeros(3, 4), "bias": torch.zeros(3), "extra": torch.zeros(1)}, "lin")
    with pytest.raises(CheckpointError, match=r"weight \(checkpoint \(4, 4\) vs model \(3, 4\)\)"):
        assign_state_dict(model, {"weight": torch.zeros(4, 4), "bias": torch.zeros(3)}, "lin")
    w = torch.randn(3, 4)
    assign_state_dict(model, {"weight": w, "bias": torch.zeros(3)}, "lin")
    assert model.weight.data_ptr() == w.data_ptr()


def test_legacy_pt_loads_without_mmap_and_missing_files_are_named(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)  # not a zip: cannot be mapped
    assert torch.equal(load_torch_file(path)["w"], torch.arange(3.0))
    with pytest.raises(CheckpointError, match=r"nope\.pt: file not found"):
        load_torch_file(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: file not found"):
        load_safetensors(tmp_path / "nope.safetensors")


def test_safetensors_dir_single_file_or_shards(tmp_path):
    sd = {"a": torch.zeros(2), "b": torch.ones(3), "c": torch.full((1,), 2.0)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    assert {k: v.tolist() for k, v in load_safetensors_dir(tmp_path, "m").items()} == {
        k: v.tolist() for k, v in sd.items()
    }

    shards = tmp_path / "shards"
    shards.mkdir()
    save_file({"a": sd["a"]}, str(shards / "m-1.safetensors"))
    save_file({"b": sd["b"], "c": sd["c"]}, str(shards / "m-2.safetensors"))
    index = shards / "m.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors"}})
    )
    assert sorted(load_safetensors_dir(shards, "m")) == ["a", "b", "c"]

    index.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "z": "m-1.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"keys listed but absent from the shards 1: z"):
        load_safetensors_dir(shards, "m")
    index.write_text("[]")
    with pytest.raises(CheckpointError, match=r"m\.safetensors\.index\.json: not a safetensors index"):
        load_safetensors_dir(shards, "m")
    with pytest.raises(CheckpointError, match=r"expected x\.safetensors or x\.safetensors\.index\.json"):
        load_safetensors_dir(shards, "x")


def test_long_key_lists_are_cut_with_a_count():
    expected = {f"k{i}": torch.Size([1]) for i in range(8)}
    with pytest.raises(CheckpointError, match=r"^m: missing keys 8: k0, k1, k2, k3, k4 \(\+3 more\)$"):
        check_state_dict(expected, {}, "m")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        as_state_dict({}, "f")
