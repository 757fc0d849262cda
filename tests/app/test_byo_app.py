"""AppTest: bring your own model and data in the web app — weight uploads (and every refusal), two sessions that
never see each other's upload, a zip as the ID set (and unsafe zips refused), plugins and server-configured models
in the Model picker, and the Compare models page."""

from __future__ import annotations

import io
import json
import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from gradviz.models.cnn import MnistResNet
from gradviz.scoring import RunConfig
from gradviz.testing.apptest import add_zip, gauges, texts

from image_bytes import canvas_png, class_folder, png_bytes, zip_bytes

SMALL = dict(limit=100, ood=["noise-uniform"], methods=["msp", "energy", "gradnorm"])


def resnet18_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return save(torchvision.models.resnet18(num_classes=10).state_dict())


def cnn_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    return save(MnistResNet().state_dict())


def bad_weights(case: str) -> tuple[bytes, str, str]:
    """(file bytes, file name, the message the app must show) for each kind of bad weights file."""
    import warnings

    state = MnistResNet().state_dict()
    buf = io.BytesIO()
    if case == "pickle":
        torch.save(state, buf, _use_new_zipfile_serialization=False)
        return buf.getvalue(), "w.safetensors", "a Python pickle"
    if case == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
        return buf.getvalue(), "w.safetensors", "a TorchScript archive"
    if case == "pt2":
        torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)), buf)
        return buf.getvalue(), "w.safetensors", "an exported program (.pt2"
    if case == "nan":
        state["fc.bias"] = torch.full((10,), float("nan"))
        return save(state), "w.safetensors", "NaN or infinite values in 1 tensor(s): fc.bias"
    if case == "too big":
        return save({**state, "pad": torch.zeros(300_000)}), "w.safetensors", "exceeds the weights limit of 1 MB"
    if case == "missing keys":
        return save({k: v for k, v in state.items() if not k.startswith("layer2.")}), "w.safetensors", \
            "missing key(s): layer2."
    if case == "shape":
        state["fc.weight"] = torch.zeros(10, 32)
        return save(state), "w.safetensors", "wrong shapes: fc.weight: file (10, 32) vs model (10, 64)"
    return b"just some text", "w.safetensors", "not a safetensors file"


def submit_weights(at: AppTest, data: bytes, name: str = "w.safetensors", arch: str = "mnist-cnn", arch_name: str = "",
                   **form: str) -> AppTest:
    """Fill the sidebar's "Your own weights" form and press "Load weights".

    One plain rerun first: AppTest runs a page after ``switch_page`` through app.py's frame on its first run
    and alone (the page draws the sidebar) afterwards, and a form's widget ids differ between the two."""
    at.run()
    at.toggle(key="gv_up_on").set_value(True).run()
    at.selectbox(key="gv_up_arch").set_value(arch)
    at.text_input(key="gv_up_name").input(arch_name)
    at.file_uploader(key="gv_up_file").set_value((name, data, "application/octet-stream"))
    for key in ("size", "mean", "std"):
        at.text_input(key=f"gv_up_{key}").input(form.get(key, ""))
    at.text_area(key="gv_up_classes").input(form.get("classes", ""))
    next(b for b in at.button if b.label == "Load weights").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_upload_resnet18_with_ten_classes_and_a_card_then_score(open_page):
    at = open_page("pages/home.py", RunConfig(**SMALL))
    submit_weights(at, resnet18_bytes(), "r18.safetensors", "torchvision:", "resnet18", size="3, 32, 32", mean="0.5",
                   std="0.25", classes=", ".join(f"digit {i}" for i in range(10)))
    cfg = at.session_state["gv_config"]
    assert cfg.model.startswith("upload:r18.safetensors#"), texts(at.error)
    assert at.selectbox(key="gv_model").value == cfg.model
    # (the "Loaded …" confirmation is checked in the real browser: AppTest reruns the page outside app.py's frame)
    model = at.session_state["gv_models"][cfg.model]
    assert model.card.input_size == (3, 32, 32) and model.card.class_names[0] == "digit 0"
    assert len(at.dataframe) == 1 and set(at.dataframe[0].value["method"]) == set(SMALL["methods"])
    assert not at.error


@pytest.mark.parametrize("case", ["pickle", "torchscript", "pt2", "nan", "too big", "missing keys", "shape", "not safetensors"])
def test_each_bad_weights_file_gives_its_message(open_page, monkeypatch, case):
    data, name, message = bad_weights(case)
    if case == "too big":
        monkeypatch.setenv("GRADVIZ_MAX_WEIGHTS_MB", "1")
    at = open_page("pages/learn.py", RunConfig(**SMALL))
    submit_weights(at, data, name)
    errors = texts(at.error)
    assert "Weights refused" in errors and message in errors, errors
    assert at.session_state["gv_config"].model == "mnist-cnn" and not at.session_state["gv_models"]


def test_two_sessions_uploading_different_weights_never_see_each_others_model(open_page):
    first = submit_weights(open_page("pages/learn.py", RunConfig(**SMALL)), cnn_bytes(1), "a.safetensors")
    second = submit_weights(open_page("pages/learn.py", RunConfig(**SMALL)), cnn_bytes(2), "b.safetensors")
    a, b = first.session_state["gv_config"].model, second.session_state["gv_config"].model
    assert a.startswith("upload:a.safetensors#") and b.startswith("upload:b.safetensors#")
    first_picker, second_picker = " ".join(first.selectbox(key="gv_model").options), " ".join(second.selectbox(key="gv_model").options)
    assert "a.safetensors#" in first_picker and "b.safetensors" not in first_picker  # options are shown as labels
    assert "b.safetensors#" in second_picker and "a.safetensors" not in second_picker
    assert list(first.session_state["gv_models"]) == [a] and list(second.session_state["gv_models"]) == [b]
    assert first.session_state["gv_models"][a].digest != second.session_state["gv_models"][b].digest
    # a third session naming the first one's upload (as a shared link or config would) does not reach it
    third = open_page("pages/home.py", RunConfig(model=a, **SMALL))
    assert third.session_state["gv_config"].model == "mnist-cnn" and not third.session_state["gv_models"]
    assert not any("a.safetensors" in o for o in third.selectbox(key="gv_model").options)




@pytest.mark.slow
def test_zip_as_the_id_set_is_split_stated_and_scored(open_page):
    at = open_page("pages/home.py", RunConfig(limit=100, ood=["noise-uniform"], methods=["msp", "mahalanobis"]))
    members = {f"digits/{c}/{i}.png": png_bytes(20 * c + i) for c in range(3) for i in range(8)}
    members["digits/readme.txt"] = b"not an image"
    add_zip(at, zip_bytes(members), "digits.zip")
    cfg = at.session_state["gv_config"]
    assert cfg.id.startswith("test:session:digits.zip#") and cfg.fit_set == "fit:" + cfg.id[len("test:"):]
    note = texts(at.sidebar.caption)
    assert "24 images in 3 classes; 12 (50%) fit" in note and "Skipped 1 file(s): digits/readme.txt: not an image file (.txt)." in note
    metrics = at.dataframe[0].value
    assert set(metrics["method"]) == {"msp", "mahalanobis"} and not at.error
    assert "digits.zip (your .zip, test part)" in at.selectbox(key="gv_id").options


@pytest.mark.parametrize("members, message", [
    ({"0/a.png": b"x", "../../evil.png": b"x"}, "zip slip"),
    ({"0/a.png": b"x", "0/bomb.png": b"\0" * (8 * 2**20)}, "zip bomb"),
])
def test_unsafe_zip_is_refused_in_the_app(open_page, members, message):
    at = open_page("pages/learn.py", RunConfig(**SMALL))
    add_zip(at, zip_bytes(members), "bad.zip")
    assert message in texts(at.error) and at.session_state["gv_config"].id == "mnist"


PLUGIN = textwrap.dedent('''
    from pathlib import Path
    import torch
    from torch import nn
    Path(__file__).with_name("ran.marker").write_text("ran")

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        return net, {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "class_names": [str(i) for i in range(10)]}
''')


def test_plugin_from_an_entry_point_is_in_the_model_picker(open_page, tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "gv_app_plugin").mkdir()
    (tmp_path / "gv_app_plugin" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "gv_app_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gv-app-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gradviz.models]\nmy-net = gv_app_plugin:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        at = open_page("pages/home.py", RunConfig(**SMALL))
        at.run()  # settle into the page-alone mode before using a sidebar widget (see submit_weights)
        picker = at.selectbox(key="gv_model")
        assert "my-net (plugin)" in picker.options
        picker.set_value("my-net").run()
        assert not at.exception and not at.error, texts(at.error)
        assert at.session_state["gv_config"].model == "my-net" and len(at.dataframe) == 1
    finally:
        sys.modules.pop("gv_app_plugin", None)


def test_file_models_run_only_when_the_server_configuration_names_them(open_page, tmp_path, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(PLUGIN)
    marker = tmp_path / "ran.marker"
    spec = f"{net_file}:build"
    at = open_page("pages/home.py", RunConfig(model=spec, **SMALL))  # as if a link or a config named it
    assert not any("net.py" in o for o in at.selectbox(key="gv_model").options)
    assert at.session_state["gv_config"].model == "mnist-cnn" and not marker.exists()
    monkeypatch.setenv("GRADVIZ_MODELS", spec)
    at = open_page("pages/home.py", RunConfig(model=spec, **SMALL))
    assert at.selectbox(key="gv_model").value == spec and marker.exists() and not at.error, texts(at.error)


@pytest.mark.slow
def test_compare_models_page_scores_two_models_side_by_side(open_page):
    at = open_page("pages/compare_models.py", RunConfig(limit=100, ood=["letters", "noise-uniform"],
                                                        methods=["msp", "energy", "mahalanobis"]))
    assert at.multiselect(key="cm_models").value == ["mnist-cnn", "mnist-vit"]
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # the bars and one histogram per model
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
    assert titles[0].startswith("AUROC per method, model") and "mnist-vit (bundled): msp" in titles[2]
    table = at.dataframe[0].value
    assert list(table.columns) == ["ood_dataset", "method", "mnist-cnn", "mnist-vit"] and len(table) == 6
    assert table[["mnist-cnn", "mnist-vit"]].notna().all().all()
    assert len(at.get("download_button")) == 4 and not at.error
    at.segmented_control(key="cm_metric").set_value("fpr95").run()
    assert not at.exception and "FPR95" in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]


def test_folder_under_the_allowed_roots_as_the_id_set(open_page, tmp_path, monkeypatch):
    from gradviz.data.session import folder_key

    root = tmp_path / "data"
    class_folder(root / "mine", 4, lambda c, i: png_bytes(60 * c + i))
    (tmp_path / "secret").mkdir()
    monkeypatch.setenv("GRADVIZ_ALLOWED_ROOTS", str(root))
    at = open_page("pages/learn.py", RunConfig(**SMALL))
    at.run()  # settle (see submit_weights)
    at.toggle(key="gv_id_on").set_value(True).run()
    at.radio(key="gv_id_source").set_value("a folder on the server").run()
    at.text_input(key="gv_id_folder").input(str(tmp_path / "secret")).run()
    at.button(key="gv_id_add_folder").click().run()
    assert "under the allowed data roots" in texts(at.error) and at.session_state["gv_config"].id == "mnist"
    at.text_input(key="gv_id_folder").input("mine").run()
    at.button(key="gv_id_add_folder").click().run()
    assert not at.exception, at.exception
    cfg = at.session_state["gv_config"]
    key = folder_key((root / "mine").resolve())  # decoded once, held by this session like an uploaded .zip
    assert cfg.id == f"test:session:{key}" and cfg.fit_set == "fit:" + cfg.id[len("test:"):]
    assert key.startswith("mine/#") and [len(d) for d in at.session_state["gv_id_sets"].values()] == [8]
    assert "mine/ (your folder, test part)" in at.selectbox(key="gv_id").options
    assert "8 images in 2 classes; 4 (50%) fit" in texts(at.sidebar.caption)


@pytest.mark.slow
def test_three_channel_model_with_a_28px_card_renders_home_inspect_and_the_playground(open_page):
    """Grey digits expanded to 3 channels at the card's native 28×28 (no resize) once crashed every page."""
    at = open_page("pages/home.py", RunConfig(limit=40, ood=["letters"], methods=["msp", "gradnorm"]))
    submit_weights(at, resnet18_bytes(), "r18.safetensors", "torchvision:", "resnet18", size="3, 28, 28", mean="0.5",
                   std="0.25")
    cfg = at.session_state["gv_config"]
    assert cfg.model.startswith("upload:r18.safetensors#"), texts(at.error)
    assert at.session_state["gv_models"][cfg.model].card.input_size == (3, 28, 28)
    assert len(at.dataframe) == 1 and set(at.dataframe[0].value["method"]) == {"msp", "gradnorm"}
    assert not at.error, texts(at.error)
    at.session_state["ins_layers"] = False
    at.switch_page("pages/inspect.py").run()
    at.radio(key="ins_source").set_value("A dataset sample").run()
    assert not at.exception and not at.error, (at.exception, texts(at.error))
    assert list(at.dataframe[0].value["method"]) == ["msp", "gradnorm"]
    assert "(3, 28, 28) input" in at.get("image")[0].proto.imgs[0].caption
    from gradviz.ui.canvas import canvas_state

    at.session_state["pg_canvas"] = canvas_state(canvas_png("three"))
    at.switch_page("pages/playground.py").run()
    assert not at.exception and not at.error, (at.exception, texts(at.error))
    assert set(gauges(at)) == {"msp", "gradnorm"}
