"""The bundled model, its reproducible training, the model wrapper, and safe weights loading."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradviz.config import ASSETS
from gradviz.data.mnist import mnist_split
from gradviz.errors import ModelError
from gradviz.models import ModelCard, load_model
from gradviz.models.cnn import MnistResNet
from gradviz.models.train import random_affine, train_mnist_cnn
from gradviz.models.weights import load_state_dict_file

# ---------------------------------------------------------------------------------------------
# the bundled model


def test_bundled_model_reaches_97_percent_on_held_out_digits(bundled_model):
    images, labels = mnist_split("test")
    assert images.shape == (1000, 1, 28, 28)
    with torch.no_grad():
        predictions = bundled_model(images).argmax(1).numpy()
    accuracy = float((predictions == labels).mean())
    assert accuracy >= 0.97
    # the card reports what the committed weights really reach
    assert bundled_model.card.test_accuracy == pytest.approx(accuracy, abs=1e-3)


def test_bundled_card_matches_model_and_data(bundled_model):
    card = bundled_model.card
    assert card.name == "mnist-cnn"
    assert tuple(card.input_size) == (1, 28, 28)
    assert card.class_names == [str(i) for i in range(10)]
    assert card.mean == pytest.approx((0.1307,)) and card.std == pytest.approx((0.3081,))
    assert bundled_model.head.out_features == card.num_classes == 10
    for key in ("epochs", "seed", "optimizer", "augmentation", "train_time_s", "torch_version"):
        assert key in card.extra
    # the normalisation is applied by the wrapper, from the card
    x = torch.rand(2, 1, 28, 28)
    expected = bundled_model.net((x - 0.1307) / 0.3081)
    torch.testing.assert_close(bundled_model(x), expected)


def test_bundled_weights_are_small_float32_safetensors():
    path = ASSETS / "mnist_cnn.safetensors"
    assert path.stat().st_size < 5 * 1024**2
    state = load_file(str(path))
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert json.loads((ASSETS / "mnist_cnn.json").read_text())["weights"] == "assets/mnist_cnn.safetensors"


def test_bundled_model_is_eval_and_leaves_no_grad(bundled_model):
    assert not bundled_model.training and not bundled_model.net.training
    assert all(p.grad is None for p in bundled_model.parameters())


# ---------------------------------------------------------------------------------------------
# training


def test_training_smoke_run_is_reproducible_and_loadable(tmp_path):
    first = train_mnist_cnn(epochs=1, seed=3, out_dir=tmp_path / "a", progress=False, limit=192)
    second = train_mnist_cnn(epochs=1, seed=3, out_dir=tmp_path / "b", progress=False, limit=192)
    assert first["weights"].is_file() and first["card"].is_file()
    state_a, state_b = load_file(str(first["weights"])), load_file(str(second["weights"]))
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # same seed -> same weights

    model = load_model("mnist-cnn", weights=first["weights"])
    assert model.digest != load_model("mnist-cnn").digest
    card = ModelCard.from_json(first["card"])
    assert card.extra["epochs"] == 1 and card.extra["seed"] == 3 and card.extra["train_images"] == 192
    assert card.test_accuracy == pytest.approx(first["test_accuracy"], abs=1e-4)
    assert 0.0 <= card.test_accuracy <= 1.0


def test_training_seed_changes_the_weights(tmp_path):
    a = train_mnist_cnn(epochs=1, seed=0, out_dir=tmp_path / "a", progress=False, limit=64)
    b = train_mnist_cnn(epochs=1, seed=1, out_dir=tmp_path / "b", progress=False, limit=64)
    wa, wb = load_file(str(a["weights"])), load_file(str(b["weights"]))
    assert not torch.equal(wa["fc.weight"], wb["fc.weight"])


def test_training_rejects_zero_epochs(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        train_mnist_cnn(epochs=0, out_dir=tmp_path, progress=False, limit=8)


def test_random_affine_keeps_shape_range_and_is_near_identity():
    gen = torch.Generator().manual_seed(0)
    images, _ = mnist_split("test")
    x = images[:64]
    y = random_affine(x, gen)
    assert y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0
    # small transforms: the ink moves little and its total stays within the scale range
    assert (y - x).abs().mean() < 0.15
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ratio.min() > 0.75 and ratio.max() < 1.3
    # different draws for each image
    assert not torch.allclose(random_affine(x[:1].repeat(2, 1, 1, 1), gen)[0],
                              random_affine(x[:1].repeat(2, 1, 1, 1), gen)[1])


@pytest.mark.slow
def test_train_cli_help_lists_options():
    result = subprocess.run(
        [sys.executable, "-m", "gradviz.models.train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--epochs", "--seed", "--out"):
        assert option in result.stdout


# ---------------------------------------------------------------------------------------------
# the wrapper


def test_logits_and_features_returns_head_input_and_leaves_no_hooks(tiny_model):
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    logits, features = tiny_model.logits_and_features(x)
    with torch.no_grad():
        h = tiny_model.net.features(tiny_model.normalize(x))
        expected_logits = tiny_model.net.fc(h)
    assert features.shape == (5, 64) and logits.shape == (5, 10)
    torch.testing.assert_close(features, h)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(tiny_model.head(features), logits)
    assert len(tiny_model.head._forward_pre_hooks) == 0
    assert len(tiny_model.head._forward_hooks) == 0
    assert all(p.grad is None for p in tiny_model.parameters())


def test_capture_features_removes_hook_after_an_exception(tiny_model):
    with pytest.raises(RuntimeError):
        with tiny_model.capture_features():
            tiny_model(torch.rand(1, 3, 28, 28))  # wrong channel count
    assert len(tiny_model.head._forward_pre_hooks) == 0


# ---------------------------------------------------------------------------------------------
# safe weights loading


class _WritesMarker:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_torch_file_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(10, 64), "payload": _WritesMarker(str(marker))}, path)
    with pytest.raises(ModelError, match="refused"):
        load_state_dict_file(path)
    with pytest.raises(ModelError):
        load_model("mnist-cnn", weights=path)
    assert not marker.exists()


def test_code_carrying_plain_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_WritesMarker(str(marker)), protocol=2))
    with pytest.raises(ModelError):
        load_model("mnist-cnn", weights=path)
    with pytest.raises(ModelError):
        load_model("torchvision:resnet18", weights=path)
    # pickle bytes disguised as safetensors are refused as well
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(ModelError):
        load_model("mnist-cnn", weights=disguised)
    assert not marker.exists()


def test_wrong_number_of_classes_is_refused_with_shapes(tmp_path):
    path = tmp_path / "five.pt"
    torch.save(MnistResNet(num_classes=5).state_dict(), path)
    with pytest.raises(ModelError, match=r"wrong shapes: fc\.weight: file \(5, 64\) vs model \(10, 64\)"):
        load_model("mnist-cnn", weights=path)


def test_wrong_width_is_refused_with_shapes(tmp_path):
    path = tmp_path / "narrow.safetensors"
    save_file(MnistResNet(width=8).state_dict(), str(path))
    with pytest.raises(ModelError, match="wrong shapes"):
        load_model("mnist-cnn", weights=path)


def test_other_architecture_state_dict_is_refused(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        load_model("mnist-cnn", weights=path)


def test_truncated_files_are_refused(tmp_path):
    good_pt = tmp_path / "good.pt"
    torch.save(MnistResNet().state_dict(), good_pt)
    good_st = ASSETS / "mnist_cnn.safetensors"
    for source, name in ((good_pt, "cut.pt"), (good_st, "cut.safetensors")):
        data = source.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelError):
            load_model("mnist-cnn", weights=cut)


def test_empty_and_missing_files_are_refused(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model("mnist-cnn", weights=empty)
    with pytest.raises(ModelError, match="not found"):
        load_model("mnist-cnn", weights=tmp_path / "missing.pt")


def test_file_of_non_tensors_is_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"fc.weight": [1, 2, 3]}, path)
    with pytest.raises(ModelError, match="state dict of tensors"):
        load_state_dict_file(path)


def test_unknown_model_name_is_refused():
    with pytest.raises(ModelError, match="unknown model 'nope'.*mnist-cnn"):
        load_model("nope")
    with pytest.raises(ModelError, match="unknown torchvision"):
        load_model("torchvision:not_a_net")


def test_torchvision_model_with_weights_file_infers_classes(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18_10.safetensors"
    save_file(net.state_dict(), str(path))
    model = load_model("torchvision:resnet18", weights=path)
    assert model.card.num_classes == 10 and model.head.out_features == 10
    assert tuple(model.card.input_size) == (3, 224, 224)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(model.normalize(x)))


def test_torchvision_download_offline_fails_fast_with_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached checkpoint

    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(ModelError, match=r"may be offline\. The bundled mnist-cnn works offline"):
        load_model("torchvision:resnet18")


def test_torchvision_head_found_by_module_not_by_key_order():
    from gradviz.models.resolver import Torchvision

    def _num_classes_in(arch, state):
        return Torchvision(f"torchvision:{arch}", arch).classes_in(state)

    # safetensors returns keys sorted by name: a ConvNeXt block's MLP weight sorts after the head
    state = {"classifier.2.weight": torch.zeros(7, 768), "features.1.0.block.3.weight": torch.zeros(384, 96)}
    assert _num_classes_in("convnext_tiny", state) == 7
    assert _num_classes_in("resnet18", {"module.fc.weight": torch.zeros(3, 512)}) == 3


# --------------------------------------------------------------------------- weights messages


def test_weights_full_of_nan_or_inf_are_refused(tmp_path):
    state = MnistResNet().state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    for name, save in (("nan.safetensors", lambda p: save_file(state, str(p))),
                       ("nan.pt", lambda p: torch.save(state, p))):
        save(tmp_path / name)
        with pytest.raises(ModelError, match=r"NaN or infinite values in 1 tensor\(s\): fc\.weight"):
            load_model("mnist-cnn", weights=tmp_path / name)
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.full_like(state["fc.bias"], float("inf"))
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_state_dict_file(tmp_path / "inf.pt")


def test_refused_weights_message_has_no_unsafe_advice_and_no_escape_codes(tmp_path):
    path = tmp_path / "evil\x1b[31mred.pt"
    torch.save({"fc.weight": torch.zeros(10, 64), "payload": _WritesMarker(str(tmp_path / "pwned"))}, path)
    with pytest.raises(ModelError) as info:
        load_state_dict_file(path)
    msg = str(info.value)
    assert "weights_only" not in msg and "trusted source" not in msg and "\x1b" not in msg and "\n" not in msg
    assert "refused weights file" in msg and "never does" in msg and "GLOBAL" in msg  # which global it wanted
    assert not (tmp_path / "pwned").exists()
