import pytest
import torch

from hyvideo.checkpoints.common import (
    CheckpointError,
    as_state_dict,
    assign_state_dict,
    load_safetensors,
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
