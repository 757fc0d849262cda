"""Bad input: zip ID sets, special files in folders, CSV exports, names shown as
plain text, and a Hub that never answers. Each test reproduces one hostile case."""

from __future__ import annotations

import io
import os
import re
import tempfile

import numpy as np
import pytest
from PIL import Image

from gradviz.data.folder import load_folder
from gradviz.data.zipset import MAX_RATIO, SMALL_MEMBER_BYTES, load_zip_bytes
from gradviz.errors import DatasetError

from image_bytes import png_bytes, zip_bytes




@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temporary folder of our own, so a test can see everything the loader would write."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


# --- zip ID sets --------------------------------------------------------------------------------------------

def test_many_one_mib_members_at_1000x_are_refused_before_anything_is_written(private_tmp):
    # 50 MiB from ~60 kB
    bomb = zip_bytes({"0/ok.png": png_bytes(1, 8)} | {f"0/{i}.png": b"\0" * 2**20 for i in range(50)})
    assert len(bomb) < 2**20
    with pytest.raises(DatasetError, match=r"expands [\d,]+× .*zip bomb"):
        load_zip_bytes(bomb, "bomb.zip")
    assert list(private_tmp.iterdir()) == []  # refused from the central directory: no temp folder, no byte


def test_many_small_members_cannot_add_up_to_a_bomb(private_tmp):
    # each member is at the small-member allowance (no per-member ratio), the archive as a whole expands > 100×
    n = 2000
    bomb = zip_bytes({f"a/{i:04d}.png": b"\0" * SMALL_MEMBER_BYTES for i in range(n)})
    assert n * SMALL_MEMBER_BYTES > MAX_RATIO * len(bomb)
    with pytest.raises(DatasetError, match="unpacks to more than .* MB, over 100× its own size"):
        load_zip_bytes(bomb, "bomb.zip")
    assert list(private_tmp.iterdir()) == []


def test_an_ordinary_image_zip_is_still_accepted(private_tmp):
    members = {f"{c}/{i}.png": png_bytes(40 * c + i, 8) for c in range(2) for i in range(5)}
    members["notes/readme.txt"] = b"\0" * 4000  # a tiny, very compressible member is fine
    data = load_zip_bytes(zip_bytes(members), "ok.zip")
    assert len(data) == 10 and list(private_tmp.iterdir()) == []


# --- special files in a folder ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_an_image_is_skipped_and_listed(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(png_bytes(10, 8))
    (tmp_path / "0" / "b.png").write_bytes(png_bytes(20, 8))
    os.mkfifo(tmp_path / "0" / "x.png")  # opening it for reading would wait for a writer forever
    data = load_folder(tmp_path, allowed_roots=[tmp_path])
    assert data.paths == ["0/a.png", "0/b.png"]
    assert ("0/x.png", "not a regular file (named pipe (FIFO)): not read") in data.skipped


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_swapped_in_after_listing_is_not_waited_on(tmp_path, monkeypatch):
    from gradviz.data import folder

    (tmp_path / "a.png").write_bytes(png_bytes(10, 8))
    (tmp_path / "b.png").write_bytes(png_bytes(20, 8))
    listed = folder._image_files

    def list_then_swap(root):
        files, skipped = listed(root)
        (root / "b.png").unlink()
        os.mkfifo(root / "b.png")
        return files, skipped

    monkeypatch.setattr(folder, "_image_files", list_then_swap)
    data = load_folder(tmp_path, allowed_roots=[tmp_path])
    assert data.paths == ["a.png"] and ("b.png", "not a regular file (named pipe (FIFO)): not read") in data.skipped


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_a_zip_is_refused_not_waited_on(tmp_path):
    from gradviz.data import load_dataset

    os.mkfifo(tmp_path / "x.zip")
    with pytest.raises(DatasetError, match="not available"):
        load_dataset("zip:x.zip", limit=4, allowed_roots=[tmp_path])


# --- CSV exports ----------------------------------------------------------------------------------------------

FORMULA_NAMES = ["=HYPERLINK(1).png", "+SUM(1+1).png", "@cmd.png", "-x.png"]


def _formula_folder(root):
    folder = root / "imgs"
    folder.mkdir()
    for i, name in enumerate(FORMULA_NAMES):
        Image.new("L", (28, 28), 30 * i).save(folder / name)
    (folder / "=broken.png").write_bytes(b"not a png")  # lands in files.csv
    return folder


def _cells(path) -> list[str]:
    import csv

    with open(path, newline="") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


@pytest.mark.slow
def test_cli_score_csvs_neutralise_formula_file_names_and_keep_numbers(tmp_path):
    import pandas as pd

    from gradviz.cli import main

    folder, out = _formula_folder(tmp_path), tmp_path / "o"
    assert main(["score", "--ood", f"folder:{folder}", "--methods", "msp,energy", "--limit", "8", "--out", str(out),
                 "--cache", "none"]) == 0
    for name in ("scores.csv", "metrics.csv", "files.csv"):
        bad = [c for c in _cells(out / name) if c[:1] in ("=", "+", "@", "\t", "\r") or c.startswith("-x")]
        assert bad == [], (name, bad)
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores.loc[scores["role"] == "ood", "path"]) == sorted("'" + n for n in FORMULA_NAMES)
    assert scores["energy"].dtype == float and (scores["energy"] < 0).all()  # negative numbers stay numbers
    assert pd.read_csv(out / "files.csv")["file"].tolist() == ["'=broken.png"]


def test_the_csv_helper_touches_text_only():
    import pandas as pd

    from gradviz.reporting.tables import to_csv

    frame = pd.DataFrame({"name": ["=1+1", "-2", "ok", "\tx", "\rx", "@a", "+b", None],
                          "value": [-1.5, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                          "count": [-1, -2, 0, 1, 2, 3, 4, 5],
                          "cat": pd.Categorical(["-a", "b"] * 4),
                          "mixed": pd.Series([-7, "=x", 1.5, "y", None, "-", "+", "@"], dtype=object)})
    back = pd.read_csv(io.StringIO(to_csv(frame)), keep_default_na=False)
    assert back["name"].tolist() == ["'=1+1", "'-2", "ok", "'\tx", "'\rx", "'@a", "'+b", ""]
    assert back["value"].tolist() == frame["value"].tolist() and back["count"].tolist() == frame["count"].tolist()
    assert back["cat"].tolist() == ["'-a", "b"] * 4
    assert back["mixed"].tolist() == ["-7", "'=x", "1.5", "y", "", "'-", "'+", "'@"]  # only text is prefixed
    assert frame["name"][0] == "=1+1"  # the caller's table is not changed


def test_ui_download_table_neutralises_formula_cells(monkeypatch):
    import pandas as pd

    from gradviz.ui import widgets

    sent = {}
    monkeypatch.setattr(widgets.st, "download_button", lambda label, data, *a, **k: sent.update(data=data))
    frame = pd.DataFrame({"path": FORMULA_NAMES, "score": [-0.5, 0.25, -3.0, 1.0]})
    widgets.download_table("⬇ scores.csv", frame, "scores.csv", key="k")
    back = pd.read_csv(io.StringIO(sent["data"]))
    assert back["path"].tolist() == ["'" + n for n in FORMULA_NAMES]
    assert back["score"].tolist() == [-0.5, 0.25, -3.0, 1.0]


def test_every_csv_is_written_through_the_one_helper():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("gradviz").rglob("*.py"), *root.joinpath("pages").glob("*.py"), root / "app.py"]
    raw = [f"{p.relative_to(root)}" for p in sources
           if p.name != "tables.py" and re.search(r"\.to_csv\(", p.read_text(encoding="utf-8"))]
    assert raw == []  # pandas' to_csv writes formulas raw; gradviz.reporting.tables.to_csv neutralises them


# --- names shown as plain text ------------------------------------------------------------------------------

IMAGE_MD = "![b{i}](http://x/b{i}.png)"
LINK_HTML = "<a href='http://x/{i}'>y{i}</a>"


def test_md_text_leaves_no_markup_and_reads_as_written():
    from gradviz.reporting.plaintext import WORD_JOINER, md_code, md_text

    hostile = ["![b](http://host/b.png)", "[x](http://host)", "<img src=x>", "# head", "- item", "12. item", "$x^2$",
               "a\n\n# b", "`code`", "**bold** _it_ ~~s~~", "&lt;", "http://host/x", "www.host.com", "me@host.com",
               ":red[x]", "a\\[b]"]
    for name in hostile:
        out = md_text(name)
        assert "\n" not in out
        assert not re.search(r"(?<!\\)(?:\\\\)*[\[\]<>`*~$&]", out), (name, out)  # every markup opener escaped
        assert not re.search(r"https?://|www\.|\w@", out, re.IGNORECASE), (name, out)  # no bare URL or e-mail link
        assert not re.match(r"\s*[#\->]|\s*\d+\.", out), (name, out)  # no heading, list or quote
        plain = re.sub(r"\\(.)", r"\1", out).replace(WORD_JOINER, "")
        assert plain == re.sub("\n+", " ", name), (name, out)  # reads as written
    for name in ["x.png", "noise-uniform", "mnist-cnn: mnist (ID)", "snake_case_name", "folder:/data/my_set"]:
        assert md_text(name) == name  # ordinary names stay as they are (and searchable)
    assert md_code("letters") == "`letters`" and md_code("a`b") == "``a`b``"


def _figure_text(fig) -> str:
    """Every string of a figure as Plotly's browser side reads it (its JSON, with \\u003c etc. decoded)."""
    import json

    return json.dumps(json.loads(fig.to_json()), ensure_ascii=False)


def test_plots_hold_no_live_html_from_names():
    import pandas as pd

    from gradviz.plots import figures as plots
    name = "<a href='http://x'>y</a>"
    figures = [plots.probability_bars(np.array([0.7, 0.3]), [name, "ok"])]
    scores = pd.DataFrame({"dataset": ["mnist"] * 5 + [name] * 5, "role": ["id"] * 5 + ["ood"] * 5,
                           "index": list(range(10)), "label": [0] * 10, "prediction": [0] * 10,
                           "msp": np.linspace(0, 1, 10)})
    figures += [plots.score_histogram(scores, "msp"), plots.score_strip(scores, "msp"),
                plots.roc_figure(scores, ["msp"], name),
                plots.heatmap(pd.DataFrame([[0.5]], index=[name], columns=[name]), name)]
    for fig in figures:
        text = _figure_text(fig)
        assert "<a" not in text and "&lt;a href='http://x'&gt;y&lt;/a&gt;" in text, text[:300]


def test_playground_path_figure_escapes_class_names_in_hover_and_axis():
    import pandas as pd

    from gradviz.playground.figures import path_figure

    fig = path_figure(pd.DataFrame({"msp": [10.0, 90.0]}), np.array([0.0, 1.0]), ["start", "end"],
                      [LINK_HTML.format(i=0)] * 2, np.array([0.9, 0.8]), {"msp": "#000"}, "step", "<b>id</b>")
    text = _figure_text(fig)
    assert "<a" not in text and "<b>id" not in text and "&lt;b&gt;id" in text


@pytest.mark.timeout(600)
def test_inspect_shows_hostile_class_names_as_plain_text(tmp_path, monkeypatch):
    """Weights uploaded with class names that are a Markdown image and an HTML link, then Inspect a sample."""
    import json
    from pathlib import Path

    import torch
    from streamlit.testing.v1 import AppTest

    from gradviz.models.zoo import BUNDLED_WEIGHTS
    from gradviz.reporting.plaintext import md_text
    from gradviz.scoring import RunConfig

    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared (as tests/app's open_page does)
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=300)
        at.session_state["gv_config"] = RunConfig(limit=40, ood=["noise-uniform"], methods=["msp"])
        at.session_state["ins_layers"] = False
        at.switch_page("pages/inspect.py")
        at.run()
        at.run()  # settle outside app.py's frame before using the sidebar form (as tests/app/test_byo_app.py)
        names = [IMAGE_MD.format(i=i) + LINK_HTML.format(i=i) for i in range(10)]
        at.toggle(key="gv_up_on").set_value(True).run()
        at.selectbox(key="gv_up_arch").set_value("mnist-cnn")
        at.file_uploader(key="gv_up_file").set_value(("w.safetensors", BUNDLED_WEIGHTS.read_bytes(),
                                                      "application/octet-stream"))
        at.text_area(key="gv_up_classes").input("\n".join(names))
        next(b for b in at.button if b.label == "Load weights").click()
        at.run()
        assert not at.exception, at.exception
        assert at.session_state["gv_config"].model.startswith("upload:"), [e.value for e in at.error]
        at.radio(key="ins_source").set_value("A dataset sample").run()
        assert not at.exception, at.exception
    finally:
        torch.set_num_threads(threads)
    value = at.metric[0].value
    # no image, link or tag survives: every [ ] < > of the name is backslash-escaped, and no bare URL is left
    assert not re.search(r"(?<!\\)[\[\]<>]", value) and "http://" not in value, value
    assert any(value.startswith(md_text(n)) for n in names), value
    spec = json.dumps(json.loads(next(c for c in at.get("plotly_chart") if c.key == "ins_probs").proto.spec))
    assert "<a" not in spec and "&lt;a href=" in spec


# --- a Hub that never answers ---------------------------------------------------------------------------------

class _SilentHub:
    """A local server that accepts every connection and never answers it (with ``answer_probe``, it answers
    the liveness probe ``HEAD /`` and nothing else)."""

    def __init__(self, answer_probe: bool = False):
        import socket
        import threading

        self.answer_probe, self.held, self.requests = answer_probe, [], []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.held.append(conn)
            if self.answer_probe:
                conn.settimeout(5)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    continue
                self.requests.append(first)
                if first.startswith("HEAD / "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self):
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_hub(monkeypatch):
    from huggingface_hub import constants

    hubs = []

    def _start(answer_probe: bool = False) -> _SilentHub:
        hub = _SilentHub(answer_probe)
        hubs.append(hub)
        endpoint = f"http://127.0.0.1:{hub.port}"
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # frozen at import: an earlier test may have set it
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets when the Hub client is imported
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        return hub

    yield _start
    for hub in hubs:
        hub.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_hub_that_accepts_but_never_answers_is_one_clear_error(silent_hub, tmp_path, monkeypatch):
    from gradviz.errors import ModelError
    from gradviz.models.timm_models import timm_pretrained

    silent_hub()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"timm:resnet18 needs its pretrained weights .* did not answer within 3 s"
                                         r".*--weights"):
        timm_pretrained("resnet18")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_hub_that_stalls_after_the_probe_is_cut_off_by_the_deadline(silent_hub, tmp_path, monkeypatch):
    from gradviz.errors import ModelError
    from gradviz.models import timm_models

    hub = silent_hub(answer_probe=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(timm_models, "HUB_READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(timm_models, "HUB_DEADLINE_S", 3.0)
    with pytest.raises(ModelError, match=r"did not answer within 1 s per request, 3 s in all"):
        timm_models.timm_pretrained("resnet18")
    assert hub.requests[0].startswith("HEAD / ") and any("resnet18" in r for r in hub.requests[1:])
