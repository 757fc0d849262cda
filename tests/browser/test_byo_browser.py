"""Real browser: bring your own model and data — upload ResNet-18 weights with a three-channel 28×28 card and score
it on Home, Inspect and the Playground, a refused file, a second session that never sees the first one's upload, a
zip as the ID set, and the Compare models page."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torchvision
from playwright.sync_api import expect
from safetensors.torch import save

from gradviz.testing.browser_sync import (MAIN, SIDEBAR, exceptions, go, is_idle, new_session, pick, rerun, save_shot,
                                          switch_on, traceback_head, wait_idle)

from image_bytes import png_bytes, zip_bytes


def resnet18_bytes() -> bytes:
    torch.manual_seed(0)
    return save(torchvision.models.resnet18(num_classes=10).state_dict())


# grey sets expanded to 3 channels at the card's own 28×28 (no resize): the case that once crashed every page
CARD = {"input_size": [3, 28, 28], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "class_names": [f"digit {i}" for i in range(10)]}


def upload_weights(page, data: bytes, name: str, card: dict | None = None, torchvision_arch: str = "") -> None:
    """Fill the sidebar's "Your own weights" form and press "Load weights" (the only step that reruns the script)."""
    switch_on(page, "Upload your own weights")
    form = page.locator(f'{SIDEBAR} [data-testid="stForm"]').first
    if torchvision_arch:
        pick(page, form, "Architecture", "torchvision: <name below>")
        form.get_by_label("torchvision / timm name").fill(torchvision_arch)
    inputs = form.locator('[data-testid="stFileUploader"] input[type="file"]')
    inputs.nth(0).set_input_files({"name": name, "mimeType": "application/octet-stream", "buffer": data})
    expect(form.get_by_text(name, exact=True)).to_be_visible()  # uploaded: listed under its uploader
    if card is not None:
        inputs.nth(1).set_input_files({"name": "card.json", "mimeType": "application/json",
                                       "buffer": json.dumps(card).encode()})
        expect(form.get_by_text("card.json", exact=True)).to_be_visible()
    with rerun(page):
        form.get_by_role("button", name="Load weights").click()


def model_options(page) -> str:
    """The Model picker's options as shown (the list is opened again if a rerun closed it)."""
    for _ in range(5):
        wait_idle(page)
        page.locator(SIDEBAR).get_by_role("combobox", name="Model", exact=True).click()
        try:
            page.locator('[role="option"]').first.wait_for(timeout=10_000)
            break
        except Exception:  # noqa: BLE001 — playwright's TimeoutError: try again
            page.keyboard.press("Escape")
    text = " | ".join(o.inner_text() for o in page.locator('[role="option"]').all())
    page.keyboard.press("Escape")
    return text


@pytest.fixture(scope="module")
def first(server, browser):
    context, page = new_session(server, browser)
    yield page
    context.close()


def test_upload_resnet18_weights_with_a_card_then_score_on_home_inspect_and_the_playground(first, server, shots_dir):
    upload_weights(first, resnet18_bytes(), "r18.safetensors", CARD, torchvision_arch="resnet18")
    expect(first.locator('[data-testid="stAlert"]', has_text="Loaded upload:r18.safetensors").first).to_be_visible()
    assert not exceptions(first), exceptions(first)
    assert "upload:r18.safetensors#" in first.locator("h3").first.inner_text()  # the Home page scores it
    expect(first.locator(f'{MAIN} [data-testid="stDataFrame"]').first).to_be_visible()
    expect(first.locator(f'{MAIN} .js-plotly-plot .main-svg').first).to_be_visible()
    save_shot(first, shots_dir / "byo_weights.png")
    go(first, "inspect")
    with rerun(first):
        first.locator(MAIN).get_by_text("A dataset sample", exact=True).click()
    expect(first.locator(f'{MAIN} [data-testid="stDataFrame"]').first).to_be_visible()
    expect(first.locator(MAIN)).to_contain_text("(3, 28, 28) input")
    assert not exceptions(first), exceptions(first)
    go(first, "playground")
    expect(first.locator(f'{MAIN} [data-testid="stAlert"]', has_text="Draw a digit").first).to_be_visible()
    assert not exceptions(first), exceptions(first)
    assert not server.tracebacks(), traceback_head(server)


def test_a_renamed_pickle_is_refused_with_its_message(first):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    upload_weights(first, buf.getvalue(), "sneaky.safetensors")
    message = first.locator('[data-testid="stAlert"]', has_text="Weights refused")
    expect(message.first).to_be_visible()
    assert "a Python pickle" in message.first.inner_text() and not exceptions(first)


def test_a_second_session_never_sees_the_first_sessions_upload(server, browser):
    context, second = new_session(server, browser)
    try:
        options = model_options(second)
        assert "mnist-cnn" in options and "r18.safetensors" not in options
    finally:
        context.close()


def test_zip_as_the_id_set(server, browser, shots_dir):
    members = {f"{c}/{i}.png": png_bytes(30 * c + i) for c in range(3) for i in range(6)}
    context, page = new_session(server, browser)
    try:
        switch_on(page, "Use your own images")
        with rerun(page):  # the "Use as ID set" button appears once a file is there
            page.locator(f'{SIDEBAR} [data-testid="stFileUploader"] input[type="file"][accept*="zip"]').set_input_files(
                {"name": "digits.zip", "mimeType": "application/zip", "buffer": zip_bytes(members)})
        with rerun(page):
            page.locator(SIDEBAR).get_by_role("button", name="Use as ID set").click()
        note = page.locator(f'{SIDEBAR} [data-testid="stCaptionContainer"]', has_text="as the ID set")
        expect(note.first).to_contain_text("18 images in 3 classes; 9 (50%) fit")
        assert not exceptions(page), exceptions(page)
        try:
            expect(page.locator(f'{MAIN} [data-testid="stDataFrame"]').first).to_be_visible()
        finally:
            save_shot(page, shots_dir / "byo_zip.png")
    finally:
        context.close()


def test_compare_models_page(server, browser, shots_dir):
    context, page = new_session(server, browser)
    try:
        go(page, "compare_models")
        expect(page.locator(f'{MAIN} .js-plotly-plot .main-svg').first).to_be_visible()
        expect(page.locator(".js-plotly-plot")).to_have_count(3)  # metric bars + a histogram per model
        assert is_idle(page)
        assert not exceptions(page), exceptions(page)
        save_shot(page, shots_dir / "compare_models.png")
        assert not server.tracebacks(), traceback_head(server)
    finally:
        context.close()
