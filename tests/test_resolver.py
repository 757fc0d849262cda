"""The resolver: every kind of model spec names one source, and that source builds the network and its card."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from gradviz.errors import ModelError
from gradviz.models import load_model, plugins
from gradviz.models.cnn import MnistResNet
from gradviz.models.resolver import KINDS, Bundled, File, Plugin, Timm, Torchvision, resolve

BUILDER = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
        return net, {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "class_names": ["a", "b", "c"]}
''')


@pytest.fixture
def specs(tmp_path, monkeypatch):
    """One spec of every kind: a plugin entry point (installed-looking) and a file builder both point at one file."""
    (tmp_path / "gv_resolver_net.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name="resolver-net", value="gv_resolver_net:build", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "plugin_entry_points", lambda: {"resolver-net": entry})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"bundled": "mnist-cnn", "torchvision": "torchvision:resnet18", "timm": "timm:test_resnet",
            "plugin": "resolver-net", "file": f"{tmp_path / 'gv_resolver_net.py'}:build"}


def test_every_kind_of_spec_resolves_to_its_source(specs):
    types = {"bundled": Bundled, "torchvision": Torchvision, "timm": Timm, "plugin": Plugin, "file": File}
    assert set(specs) == set(KINDS) == set(types)
    for kind, spec in specs.items():
        source = resolve(f"  {spec} ", allow_code=True)
        assert (type(source), source.kind, source.spec) == (types[kind], kind, spec)
    assert resolve(specs["torchvision"]).arch == "resnet18" and resolve(specs["timm"]).name == "test_resnet"
    assert resolve("mnist-vit").weights.name == "mnist_vit.safetensors"
    sized = {kind for kind, spec in specs.items() if resolve(spec, allow_code=True).sized_by_weights}
    assert sized == {"torchvision", "timm"}  # built on the meta device first; the rest have a fixed or coded shape
    assert resolve("mnist-cnn", architecture=True).sized_by_weights  # an upload's bundled architecture follows it


def test_each_source_builds_its_network_and_default_card(specs):
    state = {"fc.weight": torch.zeros(7, 512), "conv1.weight": torch.zeros(64, 3, 7, 7)}
    net, card = resolve(specs["torchvision"]).untrained(state)
    assert net.fc.out_features == 7 and card.num_classes == 7 and card.input_size == (3, 224, 224)
    net, card = resolve(specs["timm"]).untrained({"fc.weight": torch.zeros(4, 8)})
    assert card.num_classes == 4 and card.input_size == (3, 160, 160)
    for kind in ("plugin", "file"):
        net, card = resolve(specs[kind], allow_code=True).untrained()
        assert card.class_names == ["a", "b", "c"] and net(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    rgb = MnistResNet(in_channels=3, num_classes=4).state_dict()
    assert resolve("mnist-cnn").untrained(rgb)[1].input_size == (1, 28, 28)  # the model name keeps its shape
    net, card = resolve("mnist-cnn", architecture=True).untrained(rgb)  # an architecture follows the file
    assert card.input_size == (3, 28, 28) and card.num_classes == 4 and net.fc.out_features == 4


def test_a_spec_that_names_no_source_is_one_clear_error(specs):
    with pytest.raises(ModelError, match="runs a Python file"):
        resolve(specs["file"])  # refused before the file is read
    with pytest.raises(ModelError, match="unknown model 'nope'; known: mnist-cnn"):
        resolve("nope")
    with pytest.raises(ModelError, match="unknown architecture 'nope'"):
        resolve("nope", architecture=True)
    with pytest.raises(ModelError, match="lives only there"):
        resolve("upload:w.safetensors#abc")
    with pytest.raises(ModelError, match="unknown torchvision classification model 'not_a_net'"):
        resolve("torchvision:not_a_net")
    with pytest.raises(ModelError, match="unknown timm model 'nope_net'"):
        resolve("timm:nope_net")


def test_weights_and_card_are_applied_the_same_way_for_every_kind(specs, tmp_path):
    """A weights file replaces the source's weights and sets card.weights; a JSON card beside it replaces the card;
    a card that does not fit the network is refused by the one dry forward pass."""
    for kind in ("plugin", "file"):
        ref = load_model(specs[kind], allow_code=True)
        path = tmp_path / f"{kind}.safetensors"
        save_file({k: v + 1 for k, v in ref.net.state_dict().items()}, str(path))
        model = load_model(specs[kind], path, allow_code=True)
        assert model.digest != ref.digest and model.card.weights == str(path) and model.card.class_names == list("abc")
        path.with_suffix(".json").write_text('{"input_size": [1, 28, 28], "mean": [0.1], "std": [0.2], '
                                             '"class_names": ["x", "y", "z"]}')
        assert load_model(specs[kind], path, allow_code=True).card.class_names == ["x", "y", "z"]
        path.with_suffix(".json").write_text('{"input_size": [1, 28, 28], "mean": [0.1], "std": [0.2], '
                                             '"class_names": ["x", "y"]}')
        with pytest.raises(ModelError, match=f"{kind}.json: the network has 3 outputs but the card names 2"):
            load_model(specs[kind], path, allow_code=True)
