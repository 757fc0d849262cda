"""Your own ID set: a .zip of images (safe unpacking), the deterministic fit / test split, and a run on it."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from gradviz.data import load_dataset
from gradviz.data.session import session_spec, use_session_sets
from gradviz.data.splits import split_id_set, split_indices, split_spec, split_summary
from gradviz.data.zipset import load_zip_bytes
from gradviz.errors import DatasetError
from gradviz.models.zoo import random_model
from gradviz.scoring import RunConfig, run


def png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def digits_zip(per_class: int = 6, wrapper: str = "") -> bytes:
    members = {f"{wrapper}{c}/{i}.png": png(40 * c + i) for c in range(3) for i in range(per_class)}
    return make_zip(members)


def _temp_dirs() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("gradviz-zip-")}


def test_class_folders_become_labels_and_a_wrapper_folder_is_not_a_class():
    before = _temp_dirs()
    data = load_zip_bytes(digits_zip(wrapper="digits/"), "digits.zip")
    assert data.class_names == ["0", "1", "2"] and len(data) == 18
    assert np.bincount(data.labels).tolist() == [6, 6, 6] and data.images.shape == (18, 1, 12, 12)
    assert _temp_dirs() == before  # the temporary folder is gone


def test_non_images_and_nested_archives_are_skipped_with_a_reason():
    members = {"0/a.png": png(10), "0/b.png": png(20), "0/readme.txt": b"hi", "0/inner.zip": digits_zip(1),
               "0/fake.png": b"not an image", "__MACOSX/0/._a.png": b"meta", "0/.hidden.png": png(5)}
    data = load_zip_bytes(make_zip(members), "mixed.zip")
    assert len(data) == 2
    reasons = dict(data.skipped)
    assert "not an image file (.txt)" in reasons["0/readme.txt"]
    assert "nested archive" in reasons["0/inner.zip"]
    assert "not a supported image" in reasons["fake.png"]  # decoded like any upload: refused, not crashed


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_slip_and_absolute_paths_refuse_the_archive(tmp_path, name):
    target = tmp_path.parent / "evil.png"
    with pytest.raises(DatasetError, match="refused archive: member .* (outside the archive|absolute path)"):
        load_zip_bytes(make_zip({"0/ok.png": png(1), name: png(2)}), "slip.zip")
    assert not target.exists()


def test_symlink_members_refuse_the_archive():
    with pytest.raises(DatasetError, match="symbolic link"):
        load_zip_bytes(make_zip({"0/ok.png": png(1)}, symlinks={"0/link.png": "/etc/passwd"}), "link.zip")


def test_zip_bombs_are_refused_by_ratio_and_total_size():
    bomb = make_zip({"0/ok.png": png(1), "0/huge.png": b"\0" * (20 * 2**20)})  # 20 MB of zeros -> ~20 kB
    with pytest.raises(DatasetError, match="expands .*× .*zip bomb"):
        load_zip_bytes(bomb, "bomb.zip")
    with pytest.raises(DatasetError, match="exceeds the limit of 1 MB"):
        load_zip_bytes(b"PK" + b"\0" * (2**20 + 10), "big.zip", max_mb=1)
    rng = np.random.default_rng(0)  # ~10× per member: under every ratio rule; 6 MB from a 0.6 MB archive
    many = make_zip({f"0/{i}.png": rng.bytes(100_000) + b"\0" * (2**20 - 100_000) for i in range(6)})
    with pytest.raises(DatasetError, match="unpacks to more than 4 MB"):
        load_zip_bytes(many, "many.zip", max_mb=1)


def test_not_a_zip_and_an_empty_zip_are_clear_errors():
    with pytest.raises(DatasetError, match="not a readable .zip"):
        load_zip_bytes(b"hello", "x.zip")
    with pytest.raises(DatasetError, match="no image files"):
        load_zip_bytes(make_zip({"notes.txt": b"x"}), "x.zip")


def test_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat([0, 1, 2, -1], [10, 6, 3, 4])
    fit, test = split_indices(labels, 0.5, seed=3)
    assert sorted([*fit, *test]) == list(range(len(labels))) and not set(fit) & set(test)
    assert np.bincount(labels[fit] + 1).tolist() == [2, 5, 3, 2]  # -1, 0, 1, 2: round(n/2), one kept each side
    again = split_indices(labels, 0.5, seed=3)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], test)
    assert not np.array_equal(split_indices(labels, 0.5, seed=4)[0], fit)
    with pytest.raises(DatasetError, match="strictly between 0 and 1"):
        split_indices(labels, 1.0)


def test_fit_and_test_specs_and_a_run_with_mahalanobis_on_the_own_set():
    whole = load_zip_bytes(digits_zip(per_class=6), "digits.zip")
    spec = session_spec("digits.zip", "0123456789abcdef")
    use_session_sets({spec.split(":", 1)[1]: whole})
    try:
        model = random_model("mnist-cnn", num_classes=3)
        fit = load_dataset(split_spec("fit", spec, 0.5), model.card, seed=0)
        test = load_dataset(split_spec("test", spec, 0.5), model.card, seed=0)
        assert len(fit) == len(test) == 9 and fit.images.shape[1:] == (1, 28, 28)
        assert not ({tuple(x.flatten()[:3].tolist()) for x in fit.images}
                    & {tuple(x.flatten()[:3].tolist()) for x in test.images})
        part_fit, part_test = split_id_set(whole, 0.5, 0)
        assert "18 images in 3 classes; 9 (50%) fit" in split_summary("digits.zip", part_fit, part_test, 0.5, 0)
        cfg = RunConfig(model="random", id=split_spec("test", spec), fit_set=split_spec("fit", spec),
                        ood=["noise-uniform"], methods=["msp", "mahalanobis", "knn"], limit=9)
        result = run(cfg, model=model)
        ids = result.scores[result.scores["role"] == "id"]
        assert len(ids) == 9 and ids["label"].between(0, 2).all()
        assert np.isfinite(ids[["mahalanobis", "knn"]].to_numpy()).all() and not result.warnings  # knn: k capped at 9
    finally:
        use_session_sets(None)
    with pytest.raises(DatasetError, match="not among this session's uploads"):
        load_dataset(split_spec("test", spec))  # another session (or the CLI) cannot read it


def test_zip_spec_on_disk_for_the_command_line(tmp_path):
    path = tmp_path / "digits.zip"
    path.write_bytes(digits_zip(per_class=4))
    data = load_dataset(f"test:zip:{path}", seed=1)
    assert len(data) == 6 and data.class_names == ["0", "1", "2"]
    with pytest.raises(DatasetError, match="does not exist or is not a file"):
        load_dataset(f"zip:{tmp_path / 'nope.zip'}")


def test_cli_id_split_scores_the_test_part_and_fits_on_the_other(tmp_path, capsys):
    import json

    import pandas as pd

    from gradviz.cli import main

    path = tmp_path / "digits.zip"
    path.write_bytes(digits_zip(per_class=6))
    out = tmp_path / "out"
    assert main(["score", "--id", f"zip:{path}", "--id-split", "0.5", "--ood", "noise-uniform", "--methods",
                 "msp,mahalanobis", "--limit", "20", "--out", str(out), "--cache", "none"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id"] == f"test:zip:{path}" and cfg["fit_set"] == f"fit:zip:{path}"
    scores = pd.read_csv(out / "scores.csv")
    ids = scores[scores["role"] == "id"]
    assert len(ids) == 9 and np.isfinite(ids["mahalanobis"]).all()
    capsys.readouterr()
    assert main(["score", "--id", f"zip:{path}", "--id-split", "1.5", "--out", str(out)]) == 2
    assert "--id-split must lie strictly between 0 and 1" in capsys.readouterr().err


def test_zip_and_split_specs_meet_the_allowed_roots(tmp_path):
    """In the web app (allowed roots given) zip: and the fit:/test: splits read only under the roots, with the
    same one answer as folder: for outside, missing or not a file; inside the roots they load."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir(), outside.mkdir()
    (root / "digits.zip").write_bytes(digits_zip(per_class=4))
    (outside / "digits.zip").write_bytes(digits_zip(per_class=4))
    roots = [root]
    assert len(load_dataset("zip:digits.zip", allowed_roots=roots)) == 12
    assert len(load_dataset(f"test:zip:{root / 'digits.zip'}", allowed_roots=roots, seed=1)) == 6
    answers = set()
    for spec in (f"zip:{outside / 'digits.zip'}", "zip:../elsewhere/digits.zip", "zip:/etc/passwd", "zip:nope.zip",
                 f"zip:{root}", f"test:zip:{outside / 'digits.zip'}", f"fit:0.3:folder:{outside}", "test:folder:/etc"):
        with pytest.raises(DatasetError, match="is not available") as err:
            load_dataset(spec, allowed_roots=roots)
        answers.add(str(err.value).split("'")[0] + str(err.value).rsplit(":", 1)[-1])
    assert len(answers) == 2, answers  # one answer for zip files, one for folders: no oracle



def test_a_byte_bound_keeps_a_random_subset_that_fits_and_says_so():
    each = 4 * 12 * 12  # one 1×12×12 float32 image
    full = load_zip_bytes(digits_zip(), "digits.zip")
    data = load_zip_bytes(digits_zip(), "digits.zip", max_bytes=5 * each + 10, bytes_setting="the session's share")
    assert len(data) == 5 and data.images.numel() * 4 <= 5 * each + 10
    assert data.paths == sorted(data.paths, key=full.paths.index)  # in the files' order, labels with them
    assert [int(data.labels[i]) for i in range(5)] == [int(full.labels[full.paths.index(p)]) for p in data.paths]
    assert data.paths != full.paths[:5]  # a random subset, not the first files (classes 0 only)
    note = dict(data.skipped)["."]
    assert "only 5 of 18 image files loaded (random subset, seed 0)" in note
    assert "the session's share" in note and "1×12×12" in note
    again = load_zip_bytes(digits_zip(), "digits.zip", max_bytes=5 * each + 10)
    assert again.paths == data.paths  # seeded


def test_a_byte_bound_that_holds_no_image_is_refused_with_the_numbers():
    with pytest.raises(DatasetError) as err:
        load_zip_bytes(digits_zip(), "digits.zip", max_bytes=100, bytes_setting="what is left")
    text = str(err.value)
    assert text.startswith("digits.zip: not even one of the 18 images fits")
    assert "1×12×12" in text and "0 MB (what is left)" in text and "gradviz-zip-" not in text


def test_own_sets_share_the_session_budget_and_are_few():
    from gradviz.data.session import MAX_OWN_SETS, held_mb, own_set_room

    one = load_zip_bytes(digits_zip(), "digits.zip")
    room, why = own_set_room({}, session_mb=100)
    assert room == 50 * 2**20 and "50% of this session's 100 MB (GRADVIZ_SESSION_MEMORY_MB)" in why
    room_after, why_after = own_set_room({"a#1": one}, session_mb=100)
    assert room_after == room - one.images.numel() * 4 and "held by 1 set(s)" in why_after
    assert own_set_room({"a#1": one}, replacing="a#1", session_mb=100)[0] == room  # the same upload again
    assert held_mb({"a#1": one}) == 1
    many = {f"s{i}#0": one for i in range(MAX_OWN_SETS)}
    with pytest.raises(DatasetError, match=f"holds {MAX_OWN_SETS} own ID sets, the most it may"):
        own_set_room(many, session_mb=100)
