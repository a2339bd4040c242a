"""The data layer: IDX parsing and its checks, the search order, downloads from a real HTTP server."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fmnist import cli
from fmnist.core import errors
from fmnist.data import fashion
from tests.helpers import idx_bytes, require_real_data, run_cli, write_tiny_dataset


# ---------------------------------------------------------------------------------------------
# IDX round trip and damage
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    specs = write_tiny_dataset(tmp_path, compress=compress)
    dataset = fashion.load(data_dir=tmp_path, files=specs)
    assert dataset.train_images.shape == (12, 28, 28) and dataset.train_images.dtype == np.uint8
    assert dataset.train_labels.dtype == np.int64
    assert dataset.train_labels.tolist() == [k % 10 for k in range(12)]
    assert dataset.test_images.shape == (6, 28, 28)
    assert str(tmp_path) in dataset.source


def damage(path, transform):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(transform(raw)))


@pytest.mark.parametrize(
    "key, transform, message",
    [
        ("train_images", lambda raw: raw[:-100], "truncated"),
        ("train_images", lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "bad magic"),
        ("train_labels", lambda raw: raw + b"\x00", "decompresses to more than the 20 bytes"),
        ("train_images", lambda raw: raw[:4] + np.array([12, 27, 28], ">u4").tobytes() + raw[16:], "27x28"),
        ("train_images", lambda raw: b"\x00\x00\x08\x01" + raw[4:], "has 1 dimensions"),
    ],
)
def test_damaged_file_gives_clear_error(tmp_path, key, transform, message):
    specs = write_tiny_dataset(tmp_path)
    path = tmp_path / specs[key].filename
    damage(path, transform)
    specs[key] = fashion.IdxFile(
        specs[key].filename,
        fashion.hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest(),
        specs[key].count,
        specs[key].ndim,
    )
    with pytest.raises(errors.DataError, match=message) as info:
        fashion.load(data_dir=tmp_path, files=specs)
    assert str(path) in str(info.value) and "--data-dir" in str(info.value)
    assert path.exists(), "a bad file is reported, never deleted"


def test_a_file_read_once_is_read_again_when_it_changes_and_each_load_is_a_copy(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    first = fashion.load(data_dir=tmp_path, files=specs)
    first.train_images[:] = 0  # the caller's own arrays
    again = fashion.load(data_dir=tmp_path, files=specs)  # from the process's memo of verified files
    assert again.train_images.any() and again.train_images is not first.train_images
    path = tmp_path / specs["train_images"].filename
    damage(path, lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit: the same size, another checksum
    with pytest.raises(errors.DataError, match="checksum mismatch"):
        fashion.load(data_dir=tmp_path, files=specs)


def test_checksum_mismatch(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    specs["test_labels"] = fashion.IdxFile(specs["test_labels"].filename, "0" * 64, 6, 1)
    with pytest.raises(errors.DataError, match="checksum mismatch"):
        fashion.load(data_dir=tmp_path, files=specs)


def test_gzip_garbage(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    (tmp_path / specs["train_labels"].filename).write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(errors.DataError, match="not a valid gzip file"):
        fashion.load(data_dir=tmp_path, files=specs)


def rewrite_labels(tmp_path, specs, labels):
    raw = idx_bytes(np.asarray(labels, dtype=np.uint8))
    (tmp_path / specs["train_labels"].filename).write_bytes(gzip.compress(raw))
    specs["train_labels"] = fashion.IdxFile(
        specs["train_labels"].filename, fashion.hashlib.sha256(raw).hexdigest(), len(labels), 1
    )


def test_count_mismatch(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    rewrite_labels(tmp_path, specs, [1] * 11)
    with pytest.raises(errors.DataError, match=r"12 images but .* has 11 labels"):
        fashion.load(data_dir=tmp_path, files=specs)


def test_bad_label(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    rewrite_labels(tmp_path, specs, [1] * 11 + [10])
    with pytest.raises(errors.DataError, match=r"label 10 outside 0..9"):
        fashion.load(data_dir=tmp_path, files=specs)


@pytest.mark.slow
def test_cli_prints_one_line_error_not_a_traceback(tmp_path, capsys):
    write_tiny_dataset(tmp_path)  # checksums differ from the real files'
    code, _, err = run_cli(capsys, "data", "--data-dir", tmp_path)  # an exception escaping fails the test
    assert code == 2
    assert err.startswith("error:") and "checksum mismatch" in err


def test_missing_explicit_dir_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(errors.DataError, match=r"missing train-images.*; put the Fashion-MNIST files there"):
        fashion.locate()  # the message says how to fix it


# ---------------------------------------------------------------------------------------------
# Downloads against a real HTTP server on 127.0.0.1
def test_download_success_then_reuses_cache(tmp_path, http_mirror, isolated_cache):
    url, served = http_mirror
    specs = write_tiny_dataset(served)
    dataset = fashion.load(files=specs, mirrors=(url,), progress=False)
    assert "downloaded" in dataset.source and dataset.train_images.shape == (12, 28, 28)
    assert sorted(p.name for p in isolated_cache.iterdir()) == sorted(s.filename for s in specs.values())
    for path in served.iterdir():
        path.unlink()  # the mirror is gone: the second load must come from the cache
    again = fashion.load(files=specs, mirrors=(url,), progress=False)
    assert "cache" in again.source and "downloaded" not in again.source
    np.testing.assert_array_equal(again.train_images, dataset.train_images)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, http_mirror, isolated_cache):
    url, served = http_mirror
    specs = write_tiny_dataset(served)
    specs["train_images"] = fashion.IdxFile(specs["train_images"].filename, "f" * 64, 12, 3)
    with pytest.raises(errors.DataError, match="checksum mismatch"):
        fashion.load(files=specs, mirrors=(url,), progress=False)
    assert not any(p.name.startswith("train-images") for p in isolated_cache.iterdir())


def test_failing_mirror_then_working_one(tmp_path, http_mirror, isolated_cache):
    url, served = http_mirror
    specs = write_tiny_dataset(served)
    dataset = fashion.load(files=specs, mirrors=(url + "missing/", "http://127.0.0.1:9/", url), progress=False)
    assert dataset.test_labels.shape == (6,)


def test_connection_dropped_mid_file(tmp_path, http_mirror, isolated_cache):
    url, served = http_mirror
    specs = write_tiny_dataset(served)
    with pytest.raises(errors.DataError, match="connection closed after"):
        fashion.load(files=specs, mirrors=(url + "drop/",), progress=False)
    assert list(isolated_cache.iterdir()) == []
    fashion.load(files=specs, mirrors=(url + "drop/", url), progress=False)  # falls through to a good one


def test_mirror_serving_another_datasets_file(tmp_path, http_mirror, isolated_cache):
    """The real dataset's test-images link once served MNIST's file: same name, same size."""
    url, served = http_mirror
    specs = write_tiny_dataset(served / "good")
    write_tiny_dataset(served / "other", seed=1)  # same names and shapes, other pixels
    dataset = fashion.load(files=specs, mirrors=(url + "other/", url + "good/"), progress=False)
    expected = fashion.read_idx(served / "good" / specs["test_images"].filename)
    np.testing.assert_array_equal(dataset.test_images, expected)


# ---------------------------------------------------------------------------------------------
# The real dataset (CI installs the Debian package)
def test_real_dataset():
    directory = require_real_data()
    dataset = fashion.load(data_dir=directory)
    assert dataset.train_images.shape == (60_000, 28, 28) and dataset.test_images.shape == (10_000, 28, 28)
    assert np.bincount(dataset.train_labels).tolist() == [6_000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1_000] * 10
    assert dataset.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert dataset.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    (train_x, _train_y), (val_x, _val_y) = fashion.split(dataset.train_images, dataset.train_labels)
    assert (len(train_x), len(val_x)) == (48_000, 12_000)
    np.testing.assert_array_equal(val_x, dataset.train_images[48_000:])


def test_split_fraction():
    labels = np.arange(100)
    (_, train), (_, val) = fashion.split(labels, labels, 0.25)
    assert len(train) == 75 and val[0] == 75
    with pytest.raises(ValueError, match=r"validation fraction must be in \[0, 1\)"):
        fashion.split(labels, labels, 1.0)


@pytest.mark.slow
def test_cli_data_end_to_end(tmp_path, capsys):
    require_real_data()
    code, out, err = run_cli(capsys, "data", "--out", tmp_path)
    assert code == 0, err
    assert "dataset-fashion-mnist" in out
    assert "Ankle boot" in out and "6,000" in out and "(60000, 28, 28)" in out
    with Image.open(tmp_path / "samples.png") as image:
        assert image.size == (1000, 1100)
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20, "the grid is not blank"


def test_cli_help_and_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert "fmnist 0.1.0" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Hostile mirrors and files: bytes, time and decompressed size bounded by what the files are
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, message",
    [
        ("trickle", "not finished within 1 s"),
        ("endless", "sent more than the"),
        ("huge", "announces 300,000,000 bytes"),
    ],
)
def test_hostile_mirror_is_given_up(tmp_path, http_mirror, isolated_cache, kind, message):
    url, served = http_mirror
    specs = write_tiny_dataset(served)
    directory = tmp_path / "downloads"
    with pytest.raises(errors.DataError, match=message):
        fashion.download(specs["train_images"], directory, (url + kind + "/",), progress=False, deadline_s=1)
    assert not list(directory.iterdir()), "nothing kept from a failed download"


def test_gzip_bomb_in_a_data_directory_is_refused_unread(tmp_path):
    specs = write_tiny_dataset(tmp_path)
    bomb = gzip.compress(bytes(500_000), compresslevel=9)  # within the file's byte limit, 25,000x its size unpacked
    assert len(bomb) <= specs["train_labels"].max_file_bytes
    (tmp_path / specs["train_labels"].filename).write_bytes(bomb)
    with pytest.raises(errors.DataError, match="decompresses to more than the 20 bytes"):
        fashion.load(data_dir=tmp_path, files=specs)
    real = tmp_path / "real" / fashion.FILES["train_images"].filename  # the real file's limits: 200 MB stops at 47 MB
    real.parent.mkdir()
    real.write_bytes(gzip.compress(bytes(200_000_000), compresslevel=1))
    with pytest.raises(errors.DataError, match="decompresses to more than the 47,040,016 bytes"):
        fashion.read_idx(real, fashion.FILES["train_images"])
    (tmp_path / specs["train_labels"].filename).write_bytes(bytes(specs["train_labels"].max_file_bytes + 1))
    with pytest.raises(errors.DataError, match="over the limit"):
        fashion.load(data_dir=tmp_path, files=specs)


AS_NOBODY = """
import os, sys
from fmnist.data import fashion
from fmnist.core import errors
if os.geteuid() == 0:
    os.setgid(65534); os.setuid(65534)  # nobody: root reads everything, a user does not
try:
    fashion.load(data_dir=sys.argv[1], progress=False)
except errors.DataError as exc:
    print(exc)
"""


def test_unreadable_data_directory_is_one_line(tmp_path):
    write_tiny_dataset(tmp_path / "locked")
    (tmp_path / "locked").chmod(0)
    result = subprocess.run([sys.executable, "-c", AS_NOBODY, str(tmp_path / "locked")], capture_output=True, text=True)
    (tmp_path / "locked").chmod(0o700)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be read (Permission denied)" in result.stdout, result.stdout
