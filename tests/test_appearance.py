"""gradviz.data.appearance (does an upload look like the ID set?) and the camera clean-up of uploads (bug: a photo of a
dark "2" on light paper was read as an "8" with p = 1.000)."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from gradviz.data.appearance import background_level, unlike_id
from gradviz.data import load_dataset
from gradviz.data.mnist import mnist_split
from gradviz.data.images import uploads_to_imageset

from image_bytes import paper_photo


@pytest.fixture(scope="module")
def id_digits() -> torch.Tensor:
    return mnist_split("train")[0][:500]  # (500, 1, 28, 28)


def test_dark_digit_on_light_paper_looks_unlike_mnist(id_digits):
    held_out = mnist_split("test")[0][:200]
    dark_on_light = 0.8 * (1 - held_out[:3]) + 0.1  # the same digits, as ink on paper
    reasons = unlike_id(dark_on_light, id_digits, "mnist")
    assert all("dark on a light background, while 100 % of mnist's images are light on a dark background" in r
               for r in reasons), reasons
    assert all("mean intensity" in r for r in reasons)
    assert unlike_id(held_out, id_digits) == [""] * 200  # held-out MNIST digits look like MNIST
    assert background_level(dark_on_light).min() > 0.5 > background_level(held_out).max()


def test_letters_look_alike_and_noise_differs_by_its_mean(id_digits):
    assert unlike_id(load_dataset("letters", limit=50).images, id_digits) == [""] * 50
    noise = unlike_id(torch.full((2, 1, 28, 28), 0.5), id_digits)
    assert all(r.startswith("its mean intensity 0.50 is far from the ID set's") for r in noise), noise


def test_an_id_set_of_both_polarities_makes_no_polarity_claim(id_digits):
    mixed = torch.cat([id_digits[:50], 1 - id_digits[50:100]])  # half light-on-dark, half dark-on-light
    reasons = unlike_id(1 - id_digits[100:103], mixed)
    assert not any("background" in r for r in reasons)


def test_rgb_images_are_compared_on_their_grey_level(id_digits):
    rgb = (1 - id_digits[:2]).expand(-1, 3, -1, -1)  # (2, 3, 28, 28) dark on white
    assert all("dark on a light background" in r for r in unlike_id(rgb, id_digits))


def test_camera_clean_up_reads_the_photo_the_plain_upload_misreads(bundled_model):
    files = [("two.jpg", paper_photo("2"))]
    plain, errors = uploads_to_imageset(files, bundled_model.card)
    cleaned, errors2 = uploads_to_imageset(files, bundled_model.card, clean_up=True)
    assert not errors and not errors2
    assert cleaned.images.shape == plain.images.shape == (1, 1, 28, 28)
    with torch.no_grad():
        p_plain = bundled_model(plain.images).softmax(-1)[0]
        p_clean = bundled_model(cleaned.images).softmax(-1)[0]
    assert int(p_plain.argmax()) != 2  # the bug: read as-is, dark ink on paper is nothing like MNIST
    assert int(p_clean.argmax()) == 2 and float(p_clean[2]) > 0.9
    assert "cleaned up like the Playground camera" in dict(cleaned.notes)["two.jpg"]
    assert unlike_id(cleaned.images, mnist_split("train")[0][:500]) == [""]  # and it now looks like MNIST
    # decoded larger for the clean-up (the digit's box is cut out of it), but far below the photo's million pixels
    assert cleaned.decoded_pixels <= 1000 * 1000 // 64


def test_clean_up_keeps_an_image_without_ink_as_it_is(bundled_model):
    buf = io.BytesIO()
    Image.new("L", (50, 50), 128).save(buf, format="PNG")
    data, _ = uploads_to_imageset([("flat.png", buf.getvalue())], bundled_model.card, clean_up=True)
    assert torch.allclose(data.images, torch.full((1, 1, 28, 28), 128 / 255), atol=1e-3)
    assert "no ink standing out" in dict(data.notes)["flat.png"]


@pytest.mark.parametrize("size, fit", [((1, 28, 28), (112, 112)), ((3, 224, 224), (400, 400)),
                                       ((3, 32, 64), (128, 256)), ((3, 150, 300), (200, 400)),
                                       ((3, 512, 512), (512, 512))])
def test_clean_up_decode_size_is_four_times_the_card_at_most_400(size, fit):
    from gradviz.models.card import ModelCard
    from gradviz.playground.preprocess import photo_fit

    c = size[0]
    assert photo_fit(ModelCard("c", "t", size, (0.5,) * c, (0.5,) * c, ["a", "b"])) == fit


def test_the_id_description_samples_a_sorted_set_evenly():
    from gradviz.data.appearance import describe_id

    dark = torch.zeros(600, 1, 8, 8)
    sorted_set = torch.cat([dark, 1 - dark])  # 600 black images, then 600 white ones
    look = describe_id(sorted_set, "two kinds")
    assert look.light_share == pytest.approx(0.5, abs=0.01) and look.polarity is None
    assert describe_id(dark).polarity == "light on a dark background"
    assert describe_id(1 - dark).polarity == "dark on a light background"
