"""Real browser: Inspect explains a score ("explain: this score"), the map of the data renders as a Compare tab,
and the bundled ViT (a torchvision VisionTransformer) draws rollout, relevance and token Grad-CAM — no exception."""

from __future__ import annotations

from playwright.sync_api import expect

from gradviz.testing.browser_sync import MAIN, SIDEBAR, exceptions, go, new_session, rerun, traceback_head, wait_idle


def choose_model(page, name: str) -> str:
    """Pick ``name`` in the sidebar's Model box (opened again if a rerun closed the list); the options seen."""
    box = page.locator(SIDEBAR).get_by_role("combobox", name="Model", exact=True)
    seen = ""
    with rerun(page):
        for _ in range(6):
            wait_idle(page)
            box.click()
            seen = " | ".join(o.inner_text() for o in page.locator('[role="option"]').all())
            try:
                page.locator('[role="option"]', has_text=name).first.click(timeout=10_000)
                break
            except Exception:  # noqa: BLE001 — playwright's TimeoutError: try again
                page.keyboard.press("Escape")
    return seen


def _dataset_sample(page) -> None:
    go(page, "inspect")
    with rerun(page):
        page.locator(MAIN).get_by_text("A dataset sample", exact=True).click()
    expect(page.locator(f"{MAIN} .js-plotly-plot .main-svg").first).to_be_visible()


def test_cnn_explains_a_score_and_maps_the_data(server, browser):
    context, page = new_session(server, browser)
    try:
        _dataset_sample(page)
        with rerun(page):
            page.locator(MAIN).get_by_text("this score", exact=True).click()
        expect(page.locator(MAIN).get_by_text("explains", exact=False).first).to_be_visible()
        assert not exceptions(page), exceptions(page)
        assert page.locator(MAIN).get_by_text("Where does", exact=False).count() >= 1
        go(page, "compare")
        with rerun(page):
            page.get_by_role("tab", name="Map of the data").click()
        expect(page.locator(f"{MAIN} .js-plotly-plot .main-svg").first).to_be_visible()
        expect(page.locator(MAIN)).to_contain_text("PC 1")
        assert not exceptions(page), exceptions(page)
        assert not server.tracebacks(), traceback_head(server)
    finally:
        context.close()


def test_bundled_vit_draws_transformer_maps(server, browser):
    context, page = new_session(server, browser)
    try:
        seen = choose_model(page, "mnist-vit")
        _dataset_sample(page)
        text = page.locator(MAIN).inner_text()
        assert "Attention rollout" in text and "Chefer" in text and "patch grid" in text, seen
        assert not exceptions(page), exceptions(page)
        assert not server.tracebacks(), traceback_head(server)
    finally:
        context.close()
