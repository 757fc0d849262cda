"""Hostile weights files, model cards and models: each ends in one clear ModelError (web: st.error,
CLI: one ``error:`` line, exit 2), and a file that declares more than it holds is refused before memory is spent
(peak RSS measured in a subprocess)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from gradviz.cli import main
from gradviz.errors import GradvizError, ModelError
from gradviz.models import GradvizModel, load_model
from gradviz.models.card import ModelCard, card_from_form
from gradviz.models.cnn import MnistResNet
from gradviz.models.upload import model_from_upload
from gradviz.models.weights import MAX_TENSORS, WeightsFile, load_state_dict_file, read_safetensors_bytes

DEEP = b'{"a":' + b"[" * 100_000
CARD = {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.25], "class_names": [str(i) for i in range(10)]}


def with_header(header: bytes, data: bytes = b"") -> bytes:
    """A safetensors file: 8-byte little-endian header length, the header as given, the data."""
    return struct.pack("<Q", len(header)) + header + data


def safetensors_of(tensors: dict[str, torch.Tensor], declared: dict[str, list[int]] | None = None) -> bytes:
    """Real ``tensors`` plus ``declared`` float32 entries (name -> shape) that hold 0 data bytes."""
    header, chunks, end = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [end, end + len(raw)]}
        chunks.append(raw)
        end += len(raw)
    for name, shape in (declared or {}).items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end]}
    return with_header(json.dumps(header).encode(), b"".join(chunks))


def cnn_with_head(shape: list[int]) -> bytes:
    """mnist-cnn's weights with ``fc.weight`` declared as ``shape`` and 0 data bytes (the issue's files)."""
    state = {k: v for k, v in MnistResNet().state_dict().items() if k != "fc.weight"}
    return safetensors_of(state, {"fc.weight": shape})


def write_one_float_tensors(path: Path, count: int) -> Path:
    """``count`` one-float tensors (1,000,000: the issue's 75 MB file), written in chunks."""
    entries = (f'"t{i:07d}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}' for i in range(count))
    header = ("{" + ",".join(entries) + "}").encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(b"\0" * (4 * count))
    return path


# --------------------------------------------------------------------------- deep JSON nesting


def test_deeply_nested_safetensors_header_is_refused_from_memory_and_from_disk(tmp_path):
    data = with_header(DEEP)
    with pytest.raises(ModelError, match="nested too deeply"):
        read_safetensors_bytes(data, "deep.safetensors")
    with pytest.raises(ModelError, match="nested too deeply"):
        model_from_upload("mnist-cnn", data, "deep.safetensors")
    path = tmp_path / "deep.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelError, match="nested too deeply"):
        load_state_dict_file(path)
    with pytest.raises(ModelError, match="nested too deeply"):
        load_model("mnist-cnn", weights=path)


def test_deeply_nested_card_json_is_refused(tmp_path):
    with pytest.raises(ModelError, match="nested too deeply"):
        ModelCard.from_json_text(DEEP, "card.json")
    path = tmp_path / "card.json"
    path.write_bytes(DEEP)
    with pytest.raises(ModelError, match="card.json: refused .* nested too deeply"):
        ModelCard.from_json(path)


@pytest.mark.slow
def test_card_beside_torchvision_weights_is_checked(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=3).state_dict(), str(tmp_path / "r18.safetensors"))
    (tmp_path / "r18.json").write_bytes(DEEP)
    with pytest.raises(ModelError, match="nested too deeply"):
        load_model("torchvision:resnet18", weights=tmp_path / "r18.safetensors")
    (tmp_path / "r18.json").write_text(json.dumps({**CARD, "input_size": [3, 32, 32], "mean": [0.5] * 3,
                                                   "std": [0.25] * 3}))  # 10 class names for 3 outputs
    with pytest.raises(ModelError, match="3 outputs but the card names 10 classes"):
        load_model("torchvision:resnet18", weights=tmp_path / "r18.safetensors")


# --------------------------------------------------------------------------- card fields


@pytest.mark.parametrize("field, value", [
    ("architecture", {"a": 1}), ("name", ["x"]), ("description", 3), ("test_accuracy", "high"),
    ("test_accuracy", float("inf")), ("test_accuracy", True), ("training_command", {"cmd": 1}), ("weights", [1]),
    ("interpolation", {"a": 1}), ("extra", [1, 2]),
])
def test_every_card_field_has_its_type_checked(field, value):
    with pytest.raises(ModelError, match=field):
        ModelCard.from_json_text(json.dumps({**CARD, field: value}), "card.json")


def test_a_card_with_an_architecture_object_is_refused_on_upload():
    card_text = json.dumps({**CARD, "architecture": {"a": 1}})
    with pytest.raises(ModelError, match="architecture must be text, got dict"):
        model_from_upload("mnist-cnn", safetensors_of(MnistResNet().state_dict()), "w.safetensors",
                          ModelCard.from_json_text(card_text, "card.json"))


@pytest.mark.parametrize("over, message", [
    ({"std": [1e-46]}, "std must lie between"),  # 0 in float32
    ({"std": [1e-6]}, "std must lie between"),
    ({"std": [1e39]}, "std must lie between"),  # inf in float32
    ({"mean": [1e308]}, "mean must lie within"),  # inf in float32
    ({"mean": [-1e5]}, "mean must lie within"),
])
def test_normalisation_is_checked_as_float32(over, message):
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict({**CARD, **over})


def test_normalisation_typed_in_the_form_is_checked_too():
    base = ModelCard.from_dict(CARD)
    with pytest.raises(ModelError, match="std must lie between"):
        card_from_form(base, std="1e-46")
    with pytest.raises(ModelError, match="mean must lie within"):
        card_from_form(base, mean="1e308")


def test_normalisation_at_the_bounds_keeps_every_input_finite():
    card = ModelCard.from_dict({**CARD, "mean": [-1e4], "std": [1e-4]})
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    model = GradvizModel(net, card)
    x = torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])
    assert torch.isfinite(model.normalize(x)).all()


# --------------------------------------------------------------------------- headers that declare more than they hold


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 400]}, "points outside the file"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]},
     r"declares the shape \(4,\) \(16 bytes of F32\) but holds 8"),
    ({"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}, "declares the shape"),
    ({"dtype": "F32", "shape": [4]}, "exactly dtype, shape and data_offsets"),
    ({"dtype": "F32", "shape": [2 ** 40, 0], "data_offsets": [0, 0]}, "declares the shape"),
])
def test_inconsistent_header_entries_are_refused(entry, message):
    data = with_header(json.dumps({"w": entry}).encode(), b"\0" * 16)
    with pytest.raises(ModelError, match=message):
        read_safetensors_bytes(data, "w.safetensors")


def test_overlapping_tensors_and_too_many_tensors_are_refused():
    overlap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(ModelError, match="claim the same bytes"):
        read_safetensors_bytes(with_header(json.dumps(overlap).encode(), b"\0" * 12), "w.safetensors")
    many = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(MAX_TENSORS + 10))
    with pytest.raises(ModelError, match="more than 100,000 tensors"):
        read_safetensors_bytes(with_header(("{" + many + "}").encode()), "w.safetensors")


def _never_read(monkeypatch):
    """Make reading any tensor of a weights file fail the test: refusals must come from the header alone."""
    def tensors(self):
        raise AssertionError(f"tensors of {self.name} were made before the refusal")

    monkeypatch.setattr(WeightsFile, "tensors", tensors)


@pytest.mark.parametrize("arch, head, shape, message", [
    ("mnist-cnn", "fc.weight", [2_000_000_000, 0], "declares 2,000,000,000 classes"),
    ("mnist-cnn", "fc.weight", [4_000_000, 0], "declares 4,000,000 classes"),
    ("mnist-cnn", "fc.weight", [50_000, 0], r"wrong shapes: fc.weight: file \(50000, 0\) vs model \(50000, 64\)"),
    ("torchvision:resnet18", "fc.weight", [2_000_000_000, 0], "declares 2,000,000,000 classes"),
    ("torchvision:resnet18", "fc.weight", [90_000, 0], r"fc.weight: file \(90000, 0\) vs model \(90000, 512\)"),
])
def test_declared_head_is_checked_against_the_architecture_before_any_tensor(monkeypatch, arch, head, shape, message):
    _never_read(monkeypatch)
    state = MnistResNet().state_dict() if arch == "mnist-cnn" else {}
    data = safetensors_of({k: v for k, v in state.items() if k != head}, {head: shape})
    with pytest.raises(ModelError, match=message):
        model_from_upload(arch, data, "w.safetensors")


def test_weights_file_with_extra_tensors_is_refused_by_name_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    extra = {f"extra.{i}": torch.zeros(1) for i in range(500)}
    path.write_bytes(safetensors_of({**MnistResNet().state_dict(), **extra}))
    _never_read(monkeypatch)
    with pytest.raises(ModelError, match="500 unexpected key"):
        load_model("mnist-cnn", weights=path)
    with pytest.raises(ModelError, match="500 unexpected key"):
        model_from_upload("mnist-cnn", path.read_bytes(), "w.safetensors")


PEAK_PROBE = textwrap.dedent('''
    import json, sys
    import torch
    from safetensors.torch import save
    from gradviz.errors import ModelError
    from gradviz.models import load_model
    from gradviz.models.resolver import build_untrained
    from gradviz.models.upload import model_from_upload

    def peak_bytes():
        with open("/proc/self/status") as f:
            return 1024 * int(next(line for line in f if line.startswith("VmHWM")).split()[1])

    path, how, arch = sys.argv[1:4]
    data = open(path, "rb").read() if how == "upload" else None
    # a legitimate load first: imports and first-use allocations belong to the baseline
    model_from_upload(arch, save(build_untrained(arch)[0].state_dict()), "ok.safetensors")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident size
    except OSError:
        pass  # the peak so far is the baseline then
    base = peak_bytes()
    try:
        model_from_upload(arch, data, "hostile.safetensors") if how == "upload" else load_model(arch, weights=path)
        message = "accepted"
    except ModelError as exc:
        message = str(exc)
    print(json.dumps({"message": message, "rise_mb": (peak_bytes() - base) / 2**20}))
''')


def peak_rise(path: Path, how: str, arch: str = "mnist-cnn") -> dict:
    """Load ``path`` (as an upload or as ``--weights``) in a fresh interpreter: the ModelError's message and the
    rise of the peak resident memory (MB) over a baseline taken after a legitimate load."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path), how, arch], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    files = {"head 2e9": cnn_with_head([2_000_000_000, 0]), "head 4e6": cnn_with_head([4_000_000, 0])}
    paths = {name: root / f"{name.replace(' ', '_')}.safetensors" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["1e6 tensors"] = write_one_float_tensors(root / "million.safetensors", 1_000_000)
    paths["9e4 tensors"] = write_one_float_tensors(root / "ninety_thousand.safetensors", 90_000)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("head 2e9", r"2,000,000,000 classes|file \(2000000000, 0\) vs model \(10, 64\)"),
    ("head 4e6", r"4,000,000 classes|file \(4000000, 0\) vs model \(10, 64\)"),
    ("1e6 tensors", "header is 68 MB; at most 16 MB"),
    ("9e4 tensors", "56 missing key.*90000 unexpected key"),  # under the count limit: parsed, compared, refused
])
@pytest.mark.parametrize("how", ["upload", "weights"])
def test_hostile_file_is_refused_within_a_few_hundred_mb(hostile_files, case, message, how):
    result = peak_rise(hostile_files[case], how)
    assert re.search(message, result["message"]), result["message"]
    # unchecked, these files would take +1.3 GB (4e6), a 512 GB allocation (2e9), +3.6 GB (1e6 tensors), +210 MB (9e4)
    assert result["rise_mb"] < 300, result


# --------------------------------------------------------------------------- file models (CLI --model file.py:build)


FILE_MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    CARD = {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "class_names": ["a", "b"]}

    def head(k):
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, k))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = head(2)

        def forward(self, x):
            return self.body(x), x

    class NaNs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = head(2)

        def forward(self, x):
            return self.body(x) * float("nan")

    def wrong_size():  # expects 32x32 images, the card says 28x28
        return nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 2)), CARD

    def returns_tuple():
        return Pair(), CARD

    def five_outputs():
        return head(5), CARD

    def nan_logits():
        return NaNs(), CARD

    def compiled():
        torch.manual_seed(0)
        return torch.compile(head(2)), CARD
''')


@pytest.mark.parametrize("builder, message", [
    ("wrong_size", "does not take images of the card's input size 1×28×28"),
    ("returns_tuple", "returned a tuple; gradviz needs one tensor of logits"),
    ("five_outputs", "5 outputs but the card names 2 classes"),
    ("nan_logits", "NaN or infinite"),
])
def test_file_model_that_does_not_fit_its_card_is_one_error_line(tmp_path, capsys, builder, message):
    net_file = tmp_path / "nets.py"
    net_file.write_text(FILE_MODELS)
    with pytest.raises(ModelError, match=message):
        load_model(f"{net_file}:{builder}", allow_code=True)
    capsys.readouterr()
    code = main(["score", "--model", f"{net_file}:{builder}", "--ood", "noise-uniform", "--methods", "msp",
                 "--limit", "8", "--out", str(tmp_path / "out"), "--cache", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- torch.compile


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def _recording_backend(calls: list):
    def backend(graph_module, example_inputs):  # runs only if dynamo ever traces the module
        calls.append(1)
        return graph_module.forward

    return backend


def test_compiled_network_is_unwrapped_and_gives_the_eager_per_sample_norms(tmp_path):
    from gradviz.engine import layer_gradient_stats

    card = ModelCard.from_dict({**CARD, "class_names": ["a", "b", "c"]})
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    net, calls = _tiny_net(), []
    eager = layer_gradient_stats(GradvizModel(_tiny_net(), card), x, c_kernel="off")
    compiled = GradvizModel(torch.compile(net, backend=_recording_backend(calls)), card)
    nested = nn.Sequential(torch.compile(_tiny_net()[0], backend=_recording_backend(calls)), *list(_tiny_net())[1:])
    nested_model = GradvizModel(nested, card)
    for model in (compiled, nested_model):
        got = layer_gradient_stats(model, x, c_kernel="off")
        torch.testing.assert_close(got.values, eager.values)
        assert got.layers == eager.layers
    assert compiled.net is net and isinstance(nested_model.net[0], nn.Conv2d)
    assert not calls  # nothing was compiled on the way


def test_engine_given_a_compiled_module_uses_the_eager_one_or_refuses():
    from gradviz.engine import layer_sq_l2_norms

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    calls: list = []
    names, eager = layer_sq_l2_norms(_tiny_net(), x, c_kernel="off")
    names_c, got = layer_sq_l2_norms(torch.compile(_tiny_net(), backend=_recording_backend(calls)), x, c_kernel="off")
    assert names_c == names and not calls
    torch.testing.assert_close(got, eager)
    inner = _tiny_net()
    inner[0] = torch.compile(inner[0], backend=_recording_backend(calls))
    with pytest.raises(GradvizError, match="torch.compile"):
        layer_sq_l2_norms(inner, x, c_kernel="off")
    assert not calls


@pytest.mark.slow
def test_file_model_returning_a_compiled_network_is_unwrapped(tmp_path):
    net_file = tmp_path / "nets.py"
    net_file.write_text(FILE_MODELS)
    model = load_model(f"{net_file}:compiled", allow_code=True)
    assert isinstance(model.net, nn.Sequential) and type(model.net).__name__ != "OptimizedModule"


# --------------------------------------------------------------------------- the web app


@pytest.mark.slow
def test_web_upload_of_a_nested_header_or_a_bad_card_ends_in_st_error(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from gradviz.scoring import RunConfig

    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    app = str(Path(__file__).resolve().parents[2] / "app.py")
    good = safetensors_of(MnistResNet().state_dict())
    cases = [(with_header(DEEP), None, "nested too deeply"),
             (cnn_with_head([2_000_000_000, 0]), None, "declares 2,000,000,000 classes"),
             (good, json.dumps({**CARD, "architecture": {"a": 1}}).encode(), "architecture must be text"),
             (good, json.dumps({**CARD, "std": [1e-46]}).encode(), "std must lie between"),
             (good, b'{"a":' + b"[" * 100_000, "nested too deeply")]
    for weights, card, message in cases:
        at = AppTest.from_file(app, default_timeout=120)
        at.session_state["gv_config"] = RunConfig(limit=50, ood=["noise-uniform"], methods=["msp"])
        at.switch_page("pages/learn.py")
        at.run()
        at.run()  # the second run draws the sidebar from the page (see tests/app/test_byo_app.py)
        at.toggle(key="gv_up_on").set_value(True).run()
        at.selectbox(key="gv_up_arch").set_value("mnist-cnn")
        at.file_uploader(key="gv_up_file").set_value(("w.safetensors", weights, "application/octet-stream"))
        if card is not None:
            at.file_uploader(key="gv_up_card").set_value(("card.json", card, "application/json"))
        next(b for b in at.button if b.label == "Load weights").click()
        at.run()
        errors = "\n".join(str(e.value) for e in at.error)
        assert not at.exception, at.exception
        assert "Weights refused" in errors and message in errors, errors
        assert not at.session_state["gv_models"]
