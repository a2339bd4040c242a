"""Predicting on real image files: formats, the paper's preprocessing, and every kind of bad file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest

from fmnist.core import errors
from fmnist.data import photos
from fmnist.nets import inference
from tests.helpers import as_product_photo, confident_correct, png, png_header_only, run_cli


def test_large_inverted_jpeg_is_classified_as_the_original_item(tmp_path, trained_run, real_dataset):
    network, chosen = confident_correct(trained_run, real_dataset)
    assert len(chosen) == 5
    for index in chosen:
        path = tmp_path / f"item{index}.jpg"
        as_product_photo(real_dataset.test_images[index]).save(path, quality=90)
        pixels = photos.preprocess(photos.open_image(path, str(path)))
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert np.median(border) < 30, "white background negated to black"
        top = inference.classify(network, pixels[None])[0][0]
        assert top["label"] == real_dataset.test_labels[index], f"test item {index}"


def test_formats_alpha_16_bit_gif_and_dark_images(tmp_path, real_dataset):
    item = real_dataset.test_images[0]
    photo = as_product_photo(item, 140)
    reference = photos.preprocess(photo)
    for suffix in ("png", "webp", "bmp"):
        photo.save(tmp_path / f"p.{suffix}", **({"lossless": True} if suffix == "webp" else {}))
        assert np.array_equal(photos.preprocess(photos.open_image(tmp_path / f"p.{suffix}", suffix)), reference)
    # 16-bit grayscale: the same picture in 0..65535.
    sixteen = PIL.Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    sixteen.save(tmp_path / "p16.png")
    assert photos.open_image(tmp_path / "p16.png", "p16").mode.startswith("I")
    assert np.abs(photos.preprocess(photos.open_image(tmp_path / "p16.png", "p16")).astype(int) - reference).max() <= 2
    # Alpha: the object on a transparent background behaves as on white.
    rgba = photo.convert("RGBA")
    alpha = np.where(np.asarray(photo.convert("L")) > 250, 0, 255).astype(np.uint8)
    rgba.putalpha(PIL.Image.fromarray(alpha))
    rgba.save(tmp_path / "alpha.png")
    assert np.abs(photos.preprocess(photos.open_image(tmp_path / "alpha.png", "a")).astype(int) - reference).mean() < 3
    # GIF: the first frame counts.
    frames = [
        photo.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=256),
        PIL.Image.new("RGB", photo.size, (0, 0, 0)).convert("P"),
    ]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.abs(photos.preprocess(photos.open_image(tmp_path / "anim.gif", "g")).astype(int) - reference).mean() < 3
    # Already light-on-dark (like the dataset itself): not negated.
    dark = PIL.Image.fromarray(255 - np.asarray(photo.convert("L")))
    assert np.abs(photos.preprocess(dark).astype(int) - reference).mean() < 3


def write_bad_files(directory):
    good = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 10, 10)).save(good, "PNG")
    files = {
        "notes.txt": b"not an image at all",
        "empty.png": b"",
        "truncated.png": good.getvalue()[:60],
        "bomb.png": png_header_only(100_000, 100_000),
    }
    for name, raw in files.items():
        (directory / name).write_bytes(raw)
    return {name: directory / name for name in files}


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.txt", "not an image format"),
        ("empty.png", "empty file"),
        ("truncated.png", "damaged or truncated"),
        ("bomb.png", "limit"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, message):
    path = write_bad_files(tmp_path)[name]
    with pytest.raises(errors.InputError, match=message):
        photos.open_image(path, str(path))


@pytest.mark.slow
def test_cli_predicts_good_files_and_reports_bad_ones(tmp_path, capsys, trained_run, real_dataset):
    bad = write_bad_files(tmp_path)
    good = tmp_path / "coat.png"
    as_product_photo(real_dataset.test_images[1]).save(good)
    seen = tmp_path / "seen"
    files = [bad["notes.txt"], good, bad["bomb.png"]]
    code, out, err = run_cli(capsys, "predict", trained_run, *files, "--save-preprocessed", seen)
    assert code == 1  # and no exception escaped (run_cli)
    assert err.count("error:") == 2 and "notes.txt" in err and "bomb.png" in err
    assert f"{good}:" in out and out.count("%") == 3
    with PIL.Image.open(seen / "coat.28x28.png") as image:
        assert image.size == (28, 28)
    code, out, _ = run_cli(capsys, "predict", trained_run, good, "--json")
    assert code == 0
    top = json.loads(out)[0]["top"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert abs(sum(t["probability"] for t in top) - 1) < 0.2 or top[0]["probability"] > 0.5


# ---------------------------------------------------------------------------------------------
# Hostile inputs: work bounded by what a 28x28 result needs, regular files only, nothing lost


@pytest.mark.parametrize(
    "mode, size",
    [("RGBA", (4096, 4096)), ("P", (4096, 4096)), ("I;16", (4096, 4096)), ("1", (4096, 4096)), ("L", (16_000_000, 1))],
)
def test_limit_sized_images_are_shrunk_before_any_full_size_work(mode, size):
    raw = png(PIL.Image.new(mode, size))
    assert len(raw) < 200_000, "tiny files: the cost is in the pixels they declare"
    image = photos.open_image(raw, "big")
    assert max(image.size) <= photos.WORKING_SIZE
    assert photos.preprocess(image).shape == (28, 28)


def test_pixel_limit_applies_to_decoded_pixels():
    with pytest.raises(errors.TooLarge, match="4097x4096 pixels is more than the limit"):
        photos.open_image(png_header_only(4097, 4096), "over")
    buffer = io.BytesIO()  # a 48-megapixel JPEG decodes at 1/4 scale (2000x1500), within the limit; then halved
    PIL.Image.new("RGB", (8000, 6000), (200, 30, 30)).save(buffer, "JPEG")
    assert photos.open_image(buffer.getvalue(), "photo.jpg").size == (1000, 750)


def test_float_image_with_nan_pixels_gives_no_warning(tmp_path):
    values = np.full((60, 40), 200.0, np.float32)
    values[10:30, 10:30] = np.nan
    PIL.Image.fromarray(values).save(tmp_path / "nan.tiff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert photos.preprocess(photos.open_image(tmp_path / "nan.tiff", "nan")).shape == (28, 28)


@pytest.mark.slow
def test_cli_reads_regular_files_only_and_keeps_every_view(tmp_path, trained_run, real_dataset):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    shoes = [tmp_path / part / "shoe.png" for part in ("a", "b")]
    for index, path in enumerate(shoes):
        path.parent.mkdir()
        as_product_photo(real_dataset.test_images[index]).save(path)
    seen = tmp_path / "seen"
    command = [
        sys.executable,
        "-m",
        "fmnist",
        "predict",
        str(trained_run),
        str(fifo),
        "/dev/zero",
        *map(str, shoes),
        "--save-preprocessed",
        str(seen),
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("not a regular file") == 2, result.stderr
    views = [row["preprocessed"] for row in json.loads(result.stdout) if "top" in row]
    assert [os.path.basename(v) for v in views] == ["shoe.28x28.png", "shoe-2.28x28.png"]
    first, second = (np.asarray(PIL.Image.open(v)) for v in views)
    assert not np.array_equal(first, second), "both views kept, neither overwritten"


@pytest.mark.parametrize("top", ["-1", "0", "11"])
def test_top_outside_1_to_10_is_refused(tmp_path, capsys, trained_run, top):
    image = tmp_path / "x.png"
    PIL.Image.new("L", (30, 30), 128).save(image)
    code, _, err = run_cli(capsys, "predict", trained_run, image, "--top", top)
    assert code == 2 and "must be from 1 to 10" in err


def test_a_blank_image_is_predicted_with_a_word_that_nothing_was_seen(tmp_path, trained_run, real_dataset, capsys):
    PIL.Image.new("L", (5, 5), 255).save(tmp_path / "blank.png")
    as_product_photo(real_dataset.test_images[0]).save(tmp_path / "item.png")
    code, out, err = run_cli(capsys, "predict", trained_run, tmp_path / "blank.png", tmp_path / "item.png")
    assert code == 0 and out.count("\n") == 2  # both predicted
    assert err == f"warning: {tmp_path / 'blank.png'}: {photos.BLANK_WARNING}\n"  # only the blank one
    assert photos.blank(np.full((28, 28), 37, np.uint8)) and not photos.blank(real_dataset.test_images[0])
