"""AppTest: Inspect explains an uncertainty score ("explain: this score"), and says so when a map cannot."""

from __future__ import annotations

import pytest

from gradviz.scoring import RunConfig

from image_bytes import canvas_png


@pytest.mark.slow
def test_inspect_switches_to_explaining_a_score(open_page):
    app = open_page("pages/inspect.py", RunConfig(limit=60, ood=["noise-uniform"], methods=["msp", "knn", "grad_l2"]),
                    ins_layers=False, ins_source="A dataset sample", ins_attr=["saliency", "gradcam"])
    assert app.radio(key="ins_explains").value == "the class"
    app.radio(key="ins_explains").set_value("this score").run()
    assert not app.exception, app.exception
    picker = app.selectbox(key="ins_score")
    assert picker.options == ["msp — Maximum softmax probability", "grad_l2 — Gradient L2 norm (predicted label)"]
    assert "explains msp's score" in " ".join(m.value for m in app.markdown)
    picker.set_value("grad_l2").run()
    assert not app.exception, app.exception
    text = " ".join(m.value for m in app.markdown)
    assert "explains grad_l2's score" in text
    # Grad-CAM cannot read a double-backprop score: a warning, and saliency is still shown
    assert any("Grad-CAM reads one layer's activations" in w.value for w in app.warning)
    assert len(app.get("image")) == 1 + 4  # the input + saliency's original, heat map, colour bar, overlay
    assert not app.error


def test_playground_explains_the_drawing_s_score(open_page):
    from gradviz.ui.canvas import canvas_state

    app = open_page("pages/playground.py", RunConfig(limit=60, ood=["noise-uniform"], methods=["energy", "gaia_z"]))
    app.session_state["pg_canvas"] = canvas_state(canvas_png("three"))
    app.run()
    app.button(key="pg_explain").click().run()
    assert not app.exception, app.exception
    app.radio(key="pg_explains").set_value("this score").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="pg_score").options == ["energy — Energy score"]  # gaia_z is not differentiable
    assert "explains energy's score" in " ".join(m.value for m in app.markdown)
    assert not app.error


def test_inspect_runs_the_map_checks_on_demand(open_page):
    app = open_page("pages/inspect.py", RunConfig(limit=60, ood=["noise-uniform"], methods=["msp"]),
                    ins_layers=False, ins_map=False, ins_source="A dataset sample", ins_attr=["saliency"])
    assert app.toggle(key="ins_checks").value is False
    app.toggle(key="ins_checks").set_value(True).run()
    assert not app.exception, app.exception
    table = next(d for d in app.dataframe if "randomisation_similarity" in d.value.columns).value
    assert list(table["method"]) == ["saliency"] and not table["flagged"].iloc[0]
    assert any("Adebayo" in c.value for c in app.caption)


def test_inspect_shows_transformer_maps_by_default_for_mnist_vit(open_page):
    app = open_page("pages/inspect.py", RunConfig(model="mnist-vit", limit=40, ood=["noise-uniform"], methods=["msp"]),
                    ins_layers=False, ins_map=False, ins_source="A dataset sample")
    assert app.multiselect(key="ins_attr").value == ["saliency", "attention_rollout", "transformer_relevance", "gradcam"]
    captions = " ".join(m.value for m in app.markdown)
    assert "Attention rollout" in captions and "Chefer" in captions and "patch grid" in captions
    assert len(app.get("image")) == 1 + 4 * 4  # the input + (original, heat map, colour bar, overlay) × 4 maps
    assert not app.error


@pytest.mark.slow
def test_inspect_shows_swin_maps(open_page):
    """A session's own torchvision swin_t (random weights, 3×64×64): the four transformer maps render on Inspect."""
    import torch
    import torchvision

    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    torch.manual_seed(0)
    card = ModelCard(name="swin", architecture="swin_t", input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=[str(i) for i in range(10)])
    name = "upload:swin.safetensors#0000swin"
    app = open_page("pages/inspect.py", RunConfig(model=name, limit=8, ood=["noise-uniform"], methods=["msp"]),
                    gv_models={name: GradvizModel(torchvision.models.swin_t(num_classes=10), card).eval()},
                    ins_layers=False, ins_map=False, ins_source="A dataset sample")
    assert app.multiselect(key="ins_attr").value == ["saliency", "attention_rollout", "transformer_relevance", "gradcam"]
    captions = " ".join(m.value for m in app.markdown)
    assert "Attention rollout" in captions and "stage features.7" in captions and "mean over the last stage" in captions
    assert len(app.get("image")) == 1 + 4 * 4
    assert not app.error and not app.warning
