"""Bring your own weights: the card checks, safetensors-only reading of uploads, and loading into an architecture."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
import torchvision
from safetensors.torch import save

from gradviz.errors import ModelError
from gradviz.models.resolver import build_untrained, model_from_state
from gradviz.models.card import ModelCard, card_from_form
from gradviz.models.cnn import MnistResNet
from gradviz.models.upload import model_from_upload
from gradviz.models.weights import read_safetensors_bytes, sniff_weights
from gradviz.models.zoo import bundled_card


def _card_dict(**over) -> dict:
    base = {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.25], "class_names": [str(i) for i in range(10)]}
    return {**base, **over}


@pytest.fixture(scope="module")
def cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MnistResNet().state_dict()


@pytest.fixture(scope="module")
def resnet18_bytes() -> bytes:
    torch.manual_seed(1)
    return save(torchvision.models.resnet18(num_classes=10).state_dict())


# --------------------------------------------------------------------------- cards


@pytest.mark.parametrize("over, message", [
    ({"mean": [0.5, 0.5]}, "mean has 2 value"),
    ({"std": [0.0]}, "std must be positive"),
    ({"input_size": [1, 28]}, "three integers"),
    ({"input_size": [4, 28, 28]}, "4 channels"),
    ({"input_size": [1, 5000, 28]}, "1–1024"),
    ({"class_names": []}, "class_names"),
    ({"mean": ["a"]}, "list of numbers"),
    ({"bogus": 1}, "unknown key"),
    ({"interpolation": "lanczos"}, "interpolation"),
])
def test_card_checks_name_the_problem(over, message):
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(_card_dict(**over))


def test_card_json_missing_fields_and_bad_json():
    with pytest.raises(ModelError, match="lacks class_names"):
        ModelCard.from_json_text(json.dumps({"input_size": [1, 2, 2], "mean": [0], "std": [1]}))
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelCard.from_json_text("{nope")


def test_card_form_keeps_empty_fields_and_broadcasts_grey_normalisation():
    base = bundled_card("mnist-cnn")
    card = card_from_form(base, input_size="3, 32, 32", class_names="a, b, c")
    assert card.input_size == (3, 32, 32) and card.mean == base.mean * 3 and card.class_names == ["a", "b", "c"]
    assert card_from_form(base).input_size == base.input_size
    assert card_from_form(base, class_names="zero\none\n").class_names == ["zero", "one"]
    with pytest.raises(ModelError, match="input size"):
        card_from_form(base, input_size="1, 2, 3, 4")
    with pytest.raises(ModelError, match="expected numbers"):
        card_from_form(base, mean="x")


# --------------------------------------------------------------------------- reading uploads


def _torch_save(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _torchscript() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _pt2() -> bytes:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)), buf)
    return buf.getvalue()


@pytest.mark.parametrize("make, message", [
    (lambda: _torch_save({"w": torch.zeros(2)}, legacy=True), "Python pickle"),
    (lambda: _torch_save({"w": torch.zeros(2)}), "torch.save checkpoint"),
    (_torchscript, "TorchScript"),
    (_pt2, r"exported program \(\.pt2"),
    (lambda: b"hello, this is not a tensor file at all", "not a safetensors file"),
    (lambda: b"", "empty file"),
])
def test_disguised_or_damaged_files_are_refused_by_name(make, message):
    with pytest.raises(ModelError, match=message):
        read_safetensors_bytes(make(), "model.safetensors")


def test_nan_and_inf_weights_are_refused_naming_the_tensors():
    data = save({"a.weight": torch.tensor([1.0, float("nan")]), "b.bias": torch.tensor([float("inf")]),
                 "c": torch.ones(2)})
    with pytest.raises(ModelError, match=r"NaN or infinite values in 2 tensor\(s\): a\.weight, b\.bias"):
        read_safetensors_bytes(data, "w.safetensors")


def test_oversized_file_is_refused_before_parsing():
    data = save({"w": torch.zeros(300_000)})  # 1.2 MB
    with pytest.raises(ModelError, match="exceeds the weights limit of 1 MB"):
        read_safetensors_bytes(data, "w.safetensors", max_bytes=2**20)
    assert sniff_weights(data) is None and read_safetensors_bytes(data, "w")["w"].shape == (300_000,)


# --------------------------------------------------------------------------- into an architecture


def test_resnet18_upload_with_ten_classes_and_a_card(resnet18_bytes):
    card = ModelCard.from_dict(_card_dict(input_size=[3, 32, 32], mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]))
    model = model_from_upload("torchvision:resnet18", resnet18_bytes, "r18.safetensors", card)
    assert model.card.num_classes == 10 and model.card.input_size == (3, 32, 32)
    assert model.card.name.startswith("upload:r18.safetensors#") and model.head.out_features == 10
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    other = model_from_upload("torchvision:resnet18", resnet18_bytes, "r18.safetensors",
                              ModelCard.from_dict(_card_dict(input_size=[3, 32, 32], mean=[0.4] * 3, std=[0.2] * 3)))
    assert other.digest != model.digest  # same weights, another card: never the same cached results


def test_missing_and_unexpected_keys_are_listed(cnn_state):
    state = {k: v for k, v in cnn_state.items() if not k.startswith("layer3.")}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError,
                       match=r"missing key\(s\): layer3\.\S+, layer3\.\S+, .*unexpected key\(s\): extra\.weight"):
        model_from_upload("mnist-cnn", save(state), "cnn.safetensors")


def test_shape_mismatch_is_named(cnn_state):
    state = dict(cnn_state)
    state["layer1.conv1.weight"] = torch.zeros(16, 16, 5, 5)
    with pytest.raises(ModelError,
                       match=r"wrong shapes: layer1\.conv1\.weight: file \(16, 16, 5, 5\) vs model \(16, 16, 3, 3\)"):
        model_from_upload("mnist-cnn", save(state), "cnn.safetensors")


def test_card_that_does_not_fit_the_network_is_refused(cnn_state):
    data = save(cnn_state)
    with pytest.raises(ModelError, match="10 outputs but the card names 3 classes"):
        model_from_upload("mnist-cnn", data, "cnn.safetensors", form={"class_names": "a, b, c"})
    with pytest.raises(ModelError, match="only .safetensors"):
        model_from_upload("mnist-cnn", data, "cnn.pt")


def test_bundled_architecture_takes_its_shape_from_the_file():
    torch.manual_seed(0)
    state = MnistResNet(in_channels=3, num_classes=4).state_dict()
    net, card = build_untrained("mnist-cnn", state)
    assert card.input_size == (3, 28, 28) and card.num_classes == 4 and len(card.mean) == 3
    model = model_from_state("mnist-cnn", state, None, "four-class")
    assert model(torch.rand(1, 3, 28, 28)).shape == (1, 4)


def test_code_running_architectures_need_permission(tmp_path):
    path = tmp_path / "net.py"
    path.write_text("raise SystemExit('must not run')\n")
    with pytest.raises(ModelError, match="runs a Python file"):
        build_untrained(f"{path}:build")
    with pytest.raises(ModelError, match="unknown architecture"):
        build_untrained("no-such-net")


def test_the_readme_example_card_loads_resnet18_weights_for_28px_digits(resnet18_bytes):
    """The card JSON the README gives for MNIST-sized images is valid and fits a torchvision ResNet-18."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```json\n(.*?)```", readme, re.S) if '"input_size"' in b]
    assert blocks, "no example card in the README"
    card = ModelCard.from_json_text(blocks[0], "README card")
    assert card.input_size == (3, 28, 28) and card.num_classes == 10
    model = model_from_upload("torchvision:resnet18", resnet18_bytes, "r18.safetensors", card)
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)
