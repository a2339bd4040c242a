"""Fashion-MNIST: the dataset's facts, where its files are found, how they are fetched and checked.

Search order (the first that has all four files wins; `load` says which):
  1. an explicit directory (`--data-dir` or $FMNIST_DATA_DIR);
  2. /usr/share/datasets/fashion-mnist (Debian/Ubuntu package `dataset-fashion-mnist`);
  3. the user cache ($FMNIST_CACHE_DIR or platformdirs' user cache dir);
  4. a download of the missing files into that cache, mirror after mirror.

Every byte count is bounded by what the files are known to be (`IdxFile.size`): a download, a local
file and its decompression stop at the known size, and a download also at DOWNLOAD_DEADLINE_S in all.

Checksums are SHA-256 of the *decompressed* IDX bytes: Debian's .gz files differ byte-wise from
upstream's (the gzip header's file name is stripped) but decompress to the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from fmnist.core import errors, files

# ---------------------------------------------------------------------------------------------
# Dataset facts
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
MAX_SHIFT = 8  # pixels an augmentation may move an image: beyond a third of it, too little of the item stays


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of the four files: its name on the mirrors, what it holds, and its checksum."""

    filename: str  # as served, gzip-compressed
    sha256: str  # of the decompressed IDX bytes
    count: int  # number of images or labels
    ndim: int  # 3 for images (N, 28, 28), 1 for labels (N,)

    @property
    def size(self) -> int:
        """Bytes of the decompressed IDX file: magic, one 4-byte size per dimension, one byte per value."""
        return 4 + 4 * self.ndim + self.count * (IMAGE_SIZE * IMAGE_SIZE if self.ndim == 3 else 1)

    @property
    def max_file_bytes(self) -> int:
        """The most a copy on disk or a mirror may hold: gzip adds < 0.1 % to incompressible bytes."""
        return self.size + self.size // 1000 + 1024


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 60_000, 3
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60_000, 1
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 10_000, 3
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10_000, 1
    ),
}

MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 30  # for each network read
DOWNLOAD_DEADLINE_S = 600  # for a whole file: a mirror trickling bytes must not hold a download forever
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes: the only type Fashion-MNIST uses


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) int64
    source: str  # human-readable: which of the four places the files came from
    directory: Path

    def describe(self, part: str) -> dict:
        """`fmnist data`'s summary of one part ("train" or "test"): shapes, types, pixel range, images per class."""
        images, labels = getattr(self, f"{part}_images"), getattr(self, f"{part}_labels")
        return {
            "images_shape": images.shape,
            "images_dtype": str(images.dtype),
            "pixel_range": (int(images.min()), int(images.max())),
            "labels_shape": labels.shape,
            "labels_dtype": str(labels.dtype),
            "per_class": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        }


# ---------------------------------------------------------------------------------------------
# Reading and checking one file
def decompress(raw: bytes, path: Path, max_bytes: int) -> bytes:
    """The IDX bytes of a file that may or may not be gzip-compressed, never more than `max_bytes`."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    out: list[bytes] = []
    rest = raw
    while rest:  # gzip members, one after another (the files have one)
        member = zlib.decompressobj(wbits=31)
        try:
            out.append(member.decompress(rest, max_bytes + 1 - sum(len(part) for part in out)))
        except zlib.error as exc:
            raise errors.DataError(f"{path}: not a valid gzip file ({exc})") from None
        if sum(len(part) for part in out) > max_bytes:
            raise errors.DataError(f"{path}: decompresses to more than the {max_bytes:,} bytes the file holds")
        if not member.eof:
            raise errors.DataError(f"{path}: not a valid gzip file (truncated)")
        rest = member.unused_data
    return b"".join(out)


def parse_idx(data: bytes, path: Path, spec: IdxFile | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic, dimensions and length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise errors.DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    ndim = data[3]
    if spec is not None and ndim != spec.ndim:
        raise errors.DataError(f"{path}: has {ndim} dimensions, expected {spec.ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise errors.DataError(f"{path}: truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if ndim == 3 and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise errors.DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    expected_bytes = header + math.prod(dims)
    if len(data) != expected_bytes:
        what = "truncated" if len(data) < expected_bytes else "has trailing bytes"
        raise errors.DataError(f"{path}: {what}: {len(data):,} bytes, its header says {expected_bytes:,}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


VERIFIED: dict[tuple[str, IdxFile], np.ndarray] = {}  # (SHA-256 of a file's stored bytes, its spec) -> its array


def read_idx(path: Path, spec: IdxFile | None = None) -> np.ndarray:
    """Read, decompress, verify (checksum when `spec` is given) and parse one IDX file. A verified file's array
    is kept for this process under the SHA-256 of its stored bytes: a study loads the dataset for every run,
    evaluation and figure, and decompressing it costs ~0.3 s where hashing its 30 MB costs ~0.02 s. Every
    caller gets a copy of its own."""
    known = [spec] if spec else FILES.values()
    try:
        raw = files.read_regular(path, max(s.max_file_bytes for s in known))
    except errors.InputError as exc:
        raise errors.DataError(str(exc)) from None
    if spec is None:
        return decode_idx(raw, path, None)
    key = (hashlib.sha256(raw).hexdigest(), spec)
    if key not in VERIFIED:
        array = decode_idx(raw, path, spec)
        if len(VERIFIED) >= len(FILES):
            VERIFIED.pop(next(iter(VERIFIED)))  # the oldest: four arrays kept, one dataset (55 MB) in use
        VERIFIED[key] = array
    return VERIFIED[key].copy()


def decode_idx(raw: bytes, path: Path, spec: IdxFile | None) -> np.ndarray:
    """Decompress (bounded), check against `spec` and parse the bytes of the IDX file at `path`."""
    known = [spec] if spec else FILES.values()
    data = decompress(raw, path, max(s.size for s in known))
    if spec is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise errors.DataError(
                f"{path}: checksum mismatch (SHA-256 {digest[:12]}…, "
                f"expected {spec.sha256[:12]}…): not the Fashion-MNIST file"
            )
    return parse_idx(data, path, spec)


# ---------------------------------------------------------------------------------------------
# Finding the files
def cache_dir() -> Path:
    return files.user_cache() / "fashion-mnist"


def configured_mirrors() -> tuple[str, ...]:
    """$FMNIST_MIRRORS (comma-separated) replaces the built-in list."""
    value = os.environ.get("FMNIST_MIRRORS", "").strip()
    return tuple(m.strip() for m in value.split(",") if m.strip()) or MIRRORS


def find_in(directory: Path, spec: IdxFile) -> Path | None:
    """The file for `spec` in `directory`, compressed or not."""
    for name in (spec.filename, spec.filename.removesuffix(".gz")):
        try:
            if (directory / name).is_file():
                return directory / name
        except OSError as exc:  # e.g. a directory this user may not enter
            raise errors.DataError(
                f"{directory}: cannot be read ({exc.strerror}); fix its permissions or pass another --data-dir"
            ) from None
    return None


def candidate_dirs(data_dir: Path | str | None) -> list[tuple[Path, str, str]]:
    """(directory, description, how to fix a bad file there), in search order."""
    explicit = data_dir or os.environ.get("FMNIST_DATA_DIR")
    if explicit:
        return [(Path(explicit), f"directory {explicit}", "replace it, or pass another --data-dir")]
    return [
        (
            SYSTEM_DIR,
            f"Debian package dataset-fashion-mnist ({SYSTEM_DIR})",
            "reinstall it (apt-get install --reinstall dataset-fashion-mnist) or pass --data-dir",
        ),
        (cache_dir(), f"cache {cache_dir()}", "delete it to download it again, or pass --data-dir"),
    ]


def locate(
    data_dir: Path | str | None = None,
    files: dict[str, IdxFile] = FILES,
    mirrors: tuple[str, ...] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Path], str, str]:
    """Paths of the four files, a description of where they are, and the fix hint for bad files."""
    candidates = candidate_dirs(data_dir)
    for directory, description, fix in candidates:
        there = {key: find_in(directory, spec) for key, spec in files.items()}
        if all(there.values()):
            return {key: path for key, path in there.items() if path is not None}, description, fix
    if data_dir or os.environ.get("FMNIST_DATA_DIR"):
        missing = [spec.filename for key, spec in files.items() if not find_in(candidates[0][0], spec)]
        raise errors.DataError(
            f"{candidates[0][0]}: missing {', '.join(missing)}; put the Fashion-MNIST files there "
            f"(gzipped or not), or give no --data-dir (nor FMNIST_DATA_DIR) to use the Debian "
            f"package or download them"
        )
    directory, description, fix = candidates[-1]
    found = {
        key: find_in(directory, spec) or download(spec, directory, mirrors or configured_mirrors(), progress)
        for key, spec in files.items()
    }
    return found, f"{description} (downloaded)", fix


# ---------------------------------------------------------------------------------------------
# Downloading
def download(
    spec: IdxFile,
    directory: Path,
    mirrors: tuple[str, ...],
    progress: bool = True,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
) -> Path:
    """Fetch `spec` from the first mirror that serves the right bytes; never leave a bad file."""
    files.output_dir(directory)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + spec.filename
        try:
            return fetch_verified(url, spec, directory, progress, deadline_s)
        except (OSError, http.client.HTTPException, errors.DataError) as exc:
            failures.append(f"{url}: {exc}")
    raise errors.DataError(
        f"could not download {spec.filename} from any mirror ({'; '.join(failures)}); "
        f"install the Debian package dataset-fashion-mnist or pass --data-dir"
    )


def fetch_verified(
    url: str, spec: IdxFile, directory: Path, progress: bool, deadline_s: float = DOWNLOAD_DEADLINE_S
) -> Path:
    """Stream `url` into a temp file, check it, and only then give it its real name."""
    fd, tmp_name = tempfile.mkstemp(prefix=spec.filename + ".", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > spec.max_file_bytes:
                raise errors.DataError(
                    f"the mirror announces {declared:,} bytes, more than the file can be ({spec.max_file_bytes:,})"
                )
            copy_with_progress(response, out, declared, spec, progress, deadline_s)
        read_idx(tmp, spec)  # raises on a bad gzip, bad checksum or a bad IDX layout
        final = directory / spec.filename
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def copy_with_progress(response, out, total: int, spec: IdxFile, progress: bool, deadline_s: float) -> None:
    """Copy the body to `out`, stopping at the file's known size and after `deadline_s` in all."""
    import rich.progress  # imported here: only downloads need it

    stop = time.monotonic() + deadline_s
    columns = (
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.DownloadColumn(),
        rich.progress.TransferSpeedColumn(),
    )
    with rich.progress.Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"downloading {spec.filename}", total=total or None)
        # read1: what has arrived, at most one socket read, so a trickle still reaches the deadline check
        while chunk := response.read1(1 << 16):
            out.write(chunk)
            bar.update(task, advance=len(chunk))
            if out.tell() > spec.max_file_bytes:
                raise errors.DataError(f"the mirror sent more than the {spec.max_file_bytes:,} bytes the file can be")
            if time.monotonic() > stop:
                raise errors.DataError(f"not finished within {deadline_s:g} s ({out.tell():,} bytes so far)")
    # http.client raises IncompleteRead on a short body only for chunked replies: check it here.
    if total and out.tell() != total:
        raise errors.DataError(f"connection closed after {out.tell():,} of {total:,} bytes")


# ---------------------------------------------------------------------------------------------
# Loading and splitting
def load(
    data_dir: Path | str | None = None,
    files: dict[str, IdxFile] = FILES,
    mirrors: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Dataset:
    """The whole dataset as numpy arrays, every file checked."""
    paths, source, fix = locate(data_dir, files, mirrors, progress)
    arrays = {}
    for key, spec in files.items():
        try:
            arrays[key] = read_idx(paths[key], spec)
        except errors.DataError as exc:
            raise errors.DataError(f"{exc}; {fix}") from None
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels):
            raise errors.DataError(
                f"{paths[part + '_images']}: {len(images):,} images but "
                f"{paths[part + '_labels']} has {len(labels):,} labels; {fix}"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise errors.DataError(f"{paths[part + '_labels']}: label {labels.max()} outside 0..9; {fix}")
    return Dataset(
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        source,
        paths["train_images"].parent,
    )


def check_validation_fraction(validation_fraction: float) -> None:
    """The one rule: some images are trained on. 0 holds none out, as Keras's validation_split=0: a final
    fit on every training image, once the recipe has been chosen on validation (no epoch is validated)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation fraction must be in [0, 1) (0: train on every image, validate none), got {validation_fraction}"
        )


def split_index(num_samples: int, validation_fraction: float = 0.2) -> int:
    """Where Keras's `validation_split` cuts: the last `fraction` of the arrays, unshuffled."""
    check_validation_fraction(validation_fraction)
    return math.ceil(num_samples * (1.0 - validation_fraction))


def split(images: np.ndarray, labels: np.ndarray, validation_fraction: float = 0.2):
    """((train_images, train_labels), (val_images, val_labels)): 48,000 / 12,000 by default; with
    validation_fraction 0, 60,000 / none (empty arrays)."""
    cut = split_index(len(images), validation_fraction)
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def timed_load(**kwargs) -> tuple[Dataset, float]:
    start = time.perf_counter()
    dataset = load(**kwargs)
    return dataset, time.perf_counter() - start
