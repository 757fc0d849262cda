"""Real browser: bring your own model and data — upload ResNet-18 weights with a card and score, a refused file,
a zip as the ID set, a second session that never sees the first one's upload, and the Compare models page."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save

from gradviz.testing.browser import APP_STATE
from test_browser import exceptions, go, new_session, save_shot, wait_idle

SIDEBAR = '[data-testid="stSidebar"]'


def resnet18_bytes() -> bytes:
    torch.manual_seed(0)
    return save(torchvision.models.resnet18(num_classes=10).state_dict())


CARD = {"input_size": [3, 16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "class_names": [f"digit {i}" for i in range(10)]}


def switch_on(page, label: str) -> None:
    """Turn on the sidebar switch ``label`` (its panel then appears below it)."""
    switch = page.locator(f'{SIDEBAR} [data-testid="stCheckbox"]', has_text=label).first
    if not switch.locator("input").is_checked():
        switch.locator("label").first.click()
    time.sleep(0.5)
    wait_idle(page)


def pick(page, container, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label`` inside ``container``."""
    container.get_by_role("combobox", name=label, exact=True).click()
    page.locator('[role="option"]', has_text=option).first.click()


def upload_weights(page, data: bytes, name: str, card: dict | None = None, torchvision_arch: str = "") -> None:
    switch_on(page, "Upload your own weights")
    form = page.locator(f'{SIDEBAR} [data-testid="stForm"]').first
    if torchvision_arch:
        pick(page, form, "Architecture", "torchvision: <name below>")
        form.get_by_label("torchvision / timm name").fill(torchvision_arch)
    inputs = form.locator('[data-testid="stFileUploader"] input[type="file"]')
    inputs.nth(0).set_input_files({"name": name, "mimeType": "application/octet-stream", "buffer": data})
    if card is not None:
        inputs.nth(1).set_input_files({"name": "card.json", "mimeType": "application/json",
                                       "buffer": json.dumps(card).encode()})
    time.sleep(0.5)
    form.get_by_role("button", name="Load weights").click()
    time.sleep(1.0)
    wait_idle(page)


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


def test_upload_resnet18_weights_with_a_card_then_score(first, server, shots_dir):
    upload_weights(first, resnet18_bytes(), "r18.safetensors", CARD, torchvision_arch="resnet18")
    first.locator('[data-testid="stAlert"]', has_text="Loaded upload:r18.safetensors").first.wait_for()
    wait_idle(first)
    assert not exceptions(first), exceptions(first)
    assert "upload:r18.safetensors#" in first.locator("h3").first.inner_text()  # the Home page scores it
    first.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.wait_for()
    first.locator('[data-testid="stMain"] .js-plotly-plot .main-svg').first.wait_for()
    save_shot(first, shots_dir / "byo_weights.png")
    assert not server.tracebacks(), server.tracebacks()[0][-3000:]


def test_a_three_channel_28px_card_renders_home_inspect_and_the_playground(server, browser):
    """Grey sets expanded to 3 channels at the card's own 28×28 (no resize) once crashed every page."""
    context, page = new_session(server, browser)
    try:
        upload_weights(page, resnet18_bytes(), "r18_28.safetensors", {**CARD, "input_size": [3, 28, 28]},
                       torchvision_arch="resnet18")
        page.locator('[data-testid="stAlert"]', has_text="Loaded upload:r18_28.safetensors").first.wait_for()
        wait_idle(page)
        page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.wait_for()
        assert not exceptions(page), exceptions(page)
        go(page, "inspect")
        page.locator('[data-testid="stMain"]').get_by_text("A dataset sample", exact=True).click()
        time.sleep(0.5)
        wait_idle(page)
        page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.wait_for()
        assert "(3, 28, 28) input" in page.locator('[data-testid="stMain"]').inner_text()
        assert not exceptions(page), exceptions(page)
        go(page, "playground")
        page.locator('[data-testid="stMain"] [data-testid="stAlert"]', has_text="Draw a digit").first.wait_for()
        assert not exceptions(page), exceptions(page)
        assert not server.tracebacks(), server.tracebacks()[0][-3000:]
    finally:
        context.close()


def test_a_renamed_pickle_is_refused_with_its_message(first):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    upload_weights(first, buf.getvalue(), "sneaky.safetensors")
    message = first.locator('[data-testid="stAlert"]', has_text="Weights refused")
    message.first.wait_for()
    assert "a Python pickle" in message.first.inner_text() and not exceptions(first)


def test_a_second_session_never_sees_the_first_sessions_upload(server, browser):
    context, second = new_session(server, browser)
    try:
        options = model_options(second)
        assert "mnist-cnn" in options and "r18.safetensors" not in options
    finally:
        context.close()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in range(3):
            for i in range(6):
                img = io.BytesIO()
                Image.new("L", (28, 28), 30 * c + i).save(img, format="PNG")
                zf.writestr(f"{c}/{i}.png", img.getvalue())
    return buf.getvalue()


def test_zip_as_the_id_set(server, browser, shots_dir):
    context, page = new_session(server, browser)
    try:
        switch_on(page, "Use your own images")
        page.locator(f'{SIDEBAR} [data-testid="stFileUploader"] input[type="file"][accept*="zip"]').set_input_files(
            {"name": "digits.zip", "mimeType": "application/zip", "buffer": _zip()})
        page.locator(SIDEBAR).get_by_role("button", name="Use as ID set").click()
        note = page.locator(f'{SIDEBAR} [data-testid="stCaptionContainer"]', has_text="as the ID set")
        note.first.wait_for()
        time.sleep(1.0)
        wait_idle(page)
        assert "18 images in 3 classes; 9 (50%) fit" in note.first.inner_text()
        assert not exceptions(page), exceptions(page)
        try:
            page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
        finally:
            save_shot(page, shots_dir / "byo_zip.png")
    finally:
        context.close()


def test_compare_models_page(server, browser, shots_dir):
    context, page = new_session(server, browser)
    try:
        page.locator('[data-testid="stSidebarNav"] a', has_text="Compare models").first.click()
        page.wait_for_url(lambda url: url.rstrip("/").endswith("/compare_models"), timeout=60_000)
        time.sleep(0.5)
        wait_idle(page)
        page.locator('[data-testid="stMain"] .js-plotly-plot .main-svg').first.wait_for()
        assert page.locator(".js-plotly-plot").count() == 3  # metric bars + a histogram per model
        assert page.locator(APP_STATE).get_attribute("data-test-script-state") == "notRunning"
        assert not exceptions(page), exceptions(page)
        save_shot(page, shots_dir / "compare_models.png")
        assert not server.tracebacks(), server.tracebacks()[0][-3000:]
    finally:
        context.close()
