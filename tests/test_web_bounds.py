"""Bounds before work in the web app: parameter counts before a network is built, the card's input
size, the fit set under the sample cap, camera frames decoded already reduced."""

import io

import pytest
import torch
from PIL import Image
from safetensors.torch import save
from torch import nn

from gradviz.runtime import budget
from gradviz.runtime.budget import check_parameters_web, count_parameters, session_budget
from gradviz.config import ASSETS
from gradviz.errors import ModelError
from gradviz.data.images import decode_image, fit_within
from gradviz.models.upload import model_from_upload
from gradviz.playground.preprocess import PHOTO_SIDE, frame_to_input


@pytest.fixture
def real_parameters(monkeypatch) -> list[str]:
    """The names of the parameters created off the meta device (real memory) while the test runs."""
    real: list[str] = []
    original = nn.Module.register_parameter

    def spy(module, name, param):
        if param is not None and param.device.type != "meta":
            real.append(name)
        return original(module, name, param)

    monkeypatch.setattr(nn.Module, "register_parameter", spy)
    return real


@pytest.mark.parametrize("arch, expected", [("torchvision:resnet18", 11_689_512),
                                            ("torchvision:regnet_y_400mf", 4_344_144)])  # RegNet: the fallback
def test_parameters_are_counted_without_building_the_network(arch, expected, real_parameters):
    real = real_parameters
    budget._default_shape.cache_clear()
    assert count_parameters(arch) == expected
    assert real == [] or arch.endswith("regnet_y_400mf")  # RegNet's parameters are moved to meta one by one


def test_an_upload_over_the_parameter_limit_is_refused_before_it_is_built(real_parameters):
    # only the head in the file: the refusal comes before the weights are even matched to the network
    data = save({"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2)})
    built = real_parameters
    with pytest.raises(ModelError) as info:
        model_from_upload("torchvision:resnet18", data, "r18.safetensors", max_params=1_000_000)
    text = str(info.value)
    assert "torchvision:resnet18 has 11,177,538 parameters" in text and "at most 1,000,000" in text
    assert "GRADVIZ_MAX_PARAMS_WEB" in text
    assert built == []  # not one real parameter was made


def test_a_model_name_over_the_limit_is_refused_with_the_numbers(monkeypatch):
    monkeypatch.setenv("GRADVIZ_MAX_PARAMS_WEB", "5000000")
    with pytest.raises(ModelError, match=r"has 11,689,512 parameters .* at most 5,000,000"):
        check_parameters_web("torchvision:resnet18")
    assert check_parameters_web("torchvision:squeezenet1_1") < 5_000_000
    assert check_parameters_web("mnist-cnn") == 0  # bundled models are not counted (they are small and known)


def test_a_card_wider_than_the_web_cap_is_refused_before_any_forward():
    data = (ASSETS / "mnist_cnn.safetensors").read_bytes()
    with pytest.raises(ModelError) as info:
        model_from_upload("mnist-cnn", data, "w.safetensors", form={"input_size": "1, 512, 512"}, max_side=384)
    text = str(info.value)
    assert "1×512×512" in text and "at most 384 pixels per side" in text and "GRADVIZ_MAX_SIDE_WEB" in text
    model = model_from_upload("mnist-cnn", data, "w.safetensors", form={"input_size": "1, 56, 56"}, max_side=384)
    assert model.card.input_size == (1, 56, 56)


@pytest.mark.slow
def test_fitted_methods_fit_on_at_most_the_web_sample_cap(monkeypatch):
    from gradviz.methods.registry import get_method
    from gradviz.models.zoo import random_model
    from gradviz.scoring import make_runner

    model = random_model("mnist-cnn")
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", "60")
    with session_budget():
        web = make_runner(model, get_method("knn"), {"k": 5}, "mnist:train")
    cli = make_runner(model, get_method("knn"), {"k": 5}, "mnist:train")
    assert web.state.bank_.shape[0] == 60
    assert cli.state.bank_.shape[0] > 60  # the command line fits on the whole set


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), "white")
    img.paste((0, 0, 0), (width // 3, height // 3, width // 2, 2 * height // 3))  # a dark stroke
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=70, exif=exif.tobytes())
    return buf.getvalue()


def test_camera_frames_are_decoded_already_reduced():
    big = _jpeg(4000, 3000)
    assert fit_within(big, PHOTO_SIDE) == (300, 400)  # aspect kept
    assert decode_image(big, fit=fit_within(big, PHOTO_SIDE)).array.shape == (3, 300, 400)
    assert fit_within(_jpeg(4000, 3000, orientation=6), PHOTO_SIDE) == (400, 300)  # EXIF-rotated: upright sides
    assert fit_within(_jpeg(200, 100), PHOTO_SIDE) is None  # small frames are left as they are
    from gradviz.models.zoo import random_model

    x, _ = frame_to_input("camera", big, random_model("mnist-cnn").card)
    assert x is not None and tuple(x.shape) == (1, 1, 28, 28)


def test_a_builder_that_cannot_be_counted_is_refused_not_built(monkeypatch):
    import gradviz.models.resolver as resolver

    def broken(arch, state=None, **kwargs):
        raise NotImplementedError("Cannot copy out of meta tensor")

    budget._default_shape.cache_clear()
    monkeypatch.setattr(resolver, "build_untrained", broken)
    with pytest.raises(ModelError, match="cannot count the parameters of torchvision:resnet18 before building it"):
        check_parameters_web("torchvision:resnet18")
    budget._default_shape.cache_clear()


def test_a_fit_set_read_from_files_is_drawn_down_to_the_web_cap(monkeypatch):
    """Own ID sets (folders, zips) are read whole, then a seeded draw of at most the cap is fitted on (such sets
    are often ordered by class, so not the first N), under a cache key of its own."""
    import numpy as np

    from gradviz.data import ImageSet
    from gradviz.models.zoo import random_model
    from gradviz.scoring import FitSet

    labels = np.repeat(np.arange(2), 20)  # ordered by class, as a folder of class folders reads
    native = ImageSet("folder:own", torch.rand(40, 1, 28, 28), labels)
    card = random_model("mnist-cnn").card
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", "10")
    with session_budget():
        web = FitSet("folder:own", 0, "digest", native)
    cli = FitSet("folder:own", 0, "digest", native)
    drawn = web.load(card)
    assert len(drawn) == 10 and set(drawn.labels) == {0, 1}
    assert len(cli.load(card)) == 40
    assert web.key()["limit"] == 10 and cli.key()["limit"] is None and web.key() != cli.key()
