"""Bad input, round 3 (issue 23): zip ID sets, special files in folders, CSV exports, names shown as
plain text, and a Hub that never answers. Each test reproduces one hostile case."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from gradviz.data.folder import load_folder
from gradviz.data.zipset import MAX_RATIO, SMALL_MEMBER_BYTES, load_zip_bytes
from gradviz.errors import DatasetError


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temporary folder of our own, so a test can see everything the loader would write."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


# --- zip ID sets --------------------------------------------------------------------------------------------

def test_many_one_mib_members_at_1000x_are_refused_before_anything_is_written(private_tmp):
    bomb = _zip({"0/ok.png": _png(1)} | {f"0/{i}.png": b"\0" * 2**20 for i in range(50)})  # 50 MiB from ~60 kB
    assert len(bomb) < 2**20
    with pytest.raises(DatasetError, match=r"expands [\d,]+× .*zip bomb"):
        load_zip_bytes(bomb, "bomb.zip")
    assert list(private_tmp.iterdir()) == []  # refused from the central directory: no temp folder, no byte


def test_many_small_members_cannot_add_up_to_a_bomb(private_tmp):
    # each member is at the small-member allowance (no per-member ratio), the archive as a whole expands > 100×
    n = 2000
    bomb = _zip({f"a/{i:04d}.png": b"\0" * SMALL_MEMBER_BYTES for i in range(n)})
    assert n * SMALL_MEMBER_BYTES > MAX_RATIO * len(bomb)
    with pytest.raises(DatasetError, match="unpacks to more than .* MB, over 100× its own size"):
        load_zip_bytes(bomb, "bomb.zip")
    assert list(private_tmp.iterdir()) == []


def test_an_ordinary_image_zip_is_still_accepted(private_tmp):
    members = {f"{c}/{i}.png": _png(40 * c + i) for c in range(2) for i in range(5)}
    members["notes/readme.txt"] = b"\0" * 4000  # a tiny, very compressible member is fine
    data = load_zip_bytes(_zip(members), "ok.zip")
    assert len(data) == 10 and list(private_tmp.iterdir()) == []


# --- special files in a folder ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_an_image_is_skipped_and_listed(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(_png(10))
    (tmp_path / "0" / "b.png").write_bytes(_png(20))
    os.mkfifo(tmp_path / "0" / "x.png")  # opening it for reading would wait for a writer forever
    data = load_folder(tmp_path, allowed_roots=[tmp_path])
    assert data.paths == ["0/a.png", "0/b.png"]
    assert ("0/x.png", "not a regular file (named pipe (FIFO)): not read") in data.skipped


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_swapped_in_after_listing_is_not_waited_on(tmp_path, monkeypatch):
    from gradviz.data import folder

    (tmp_path / "a.png").write_bytes(_png(10))
    (tmp_path / "b.png").write_bytes(_png(20))
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

    from gradviz.tables import to_csv

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
    assert raw == []  # pandas' to_csv writes formulas raw; gradviz.tables.to_csv neutralises them
