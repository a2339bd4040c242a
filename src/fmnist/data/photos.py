"""Predict on real images, preprocessed the way Fashion-MNIST was made from product photos.

Xiao, Rasul and Vollgraf (2017), "Fashion-MNIST", section 2: trim the edges close to the corner
pixels' colour, resize the longest edge to 28 by subsampling, sharpen (Gaussian, radius and sigma 1),
pad the short edge to 28 with the object centred, negate, convert to 8-bit grayscale. Negation here
happens only when the background (the 28x28 border) is light, so an already-dark image is left alone.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps

from fmnist.core import errors, files
from fmnist.data import fashion

# Limits: a 28x28 classifier needs few pixels, so work is bounded by what the result can use.
MAX_FILE_BYTES = 64 * 1024 * 1024  # an image file on disk (the server limits its request bodies itself)
MAX_PIXELS = 4096 * 4096  # decoded pixels (at most 4 bytes each: 64 MB); JPEGs decode reduced first
WORKING_SIZE = 1024  # longest edge kept for trimming; everything after decoding runs on this
TRIM_TOLERANCE = 0.05  # "close to the corner colour": within 5 % of the largest RGB distance
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def open_image(source: Path | bytes, name: str, max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Decode a file or bytes (first frame), refusing what is not a sane image; at most WORKING_SIZE wide."""
    raw = source if isinstance(source, bytes) else files.read_regular(Path(source), MAX_FILE_BYTES)
    if not raw:
        raise errors.InputError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(raw))
            image.draft(None, (WORKING_SIZE, WORKING_SIZE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale (no-op otherwise)
            width, height = image.size
            if width * height > max_pixels or width < 1 or height < 1:
                raise errors.TooLarge(f"{name}: {width}x{height} pixels is more than the limit of {max_pixels:,}")
            image.seek(0)  # the first frame of a GIF or WebP animation
            image.load()  # decode now: a truncated file fails here, not later
            return shrink(image)
    except errors.InputError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise errors.TooLarge(
            f"{name}: too many pixels, over the limit of {max_pixels:,} (a decompression bomb?)"
        ) from None
    except PIL.UnidentifiedImageError:
        raise errors.UnsupportedInput(f"{name}: not an image format Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise errors.InputError(f"{name}: damaged or truncated image ({exc})") from None


def shrink(image: PIL.Image.Image) -> PIL.Image.Image:
    """At most WORKING_SIZE on the longest edge, by subsampling, in any mode: later steps never touch full size.

    Nearest-neighbour costs only its output (Pillow's box `reduce` copies the whole image first for alpha,
    palette and 16-bit modes), and it is the paper's own way of resizing.
    """
    factor = -(-max(image.size) // WORKING_SIZE)  # ceil
    if factor <= 1:
        return image
    size = (-(-image.width // factor), -(-image.height // factor))
    return image.resize(size, PIL.Image.Resampling.NEAREST)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """8-bit RGB; transparency composited onto white (a product photo's background)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = 65535.0 if values.max() > 255 else 255.0
        image = PIL.Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def trim(image: PIL.Image.Image) -> tuple[PIL.Image.Image, tuple[int, int, int]]:
    """Crop the edges whose colour is within TRIM_TOLERANCE of the corners' colour; return the colour too."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3), at most WORKING_SIZE on a side
    corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]
    background = np.median(corners, axis=0)
    distance = np.sqrt(((pixels - background) ** 2).sum(axis=2))
    rows, cols = np.nonzero(distance > TRIM_TOLERANCE * np.sqrt(3) * 255)
    color = (int(background[0]), int(background[1]), int(background[2]))
    if len(rows) == 0:
        return image, color
    return image.crop((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)), color


def preprocess(image: PIL.Image.Image) -> np.ndarray:
    """Any Pillow image -> (28, 28) uint8, light object on dark background."""
    image, background = trim(to_rgb(image))
    width, height = image.size
    scale = fashion.IMAGE_SIZE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, PIL.Image.Resampling.NEAREST)  # the paper's subsampling
    image = image.filter(PIL.ImageFilter.UnsharpMask(radius=1.0, percent=100, threshold=0))
    canvas = PIL.Image.new("RGB", (fashion.IMAGE_SIZE, fashion.IMAGE_SIZE), background)
    canvas.paste(image, ((fashion.IMAGE_SIZE - size[0]) // 2, (fashion.IMAGE_SIZE - size[1]) // 2))
    gray = np.asarray(canvas.convert("L"))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255 - gray if border.mean() > 127 else gray.copy()


BLANK_RANGE = 16  # a 28x28 view whose darkest and lightest pixels differ by less holds nothing to classify
BLANK_WARNING = "the image is one flat shade once preprocessed: nothing was seen, the classes are guesses"


def blank(pixels: np.ndarray) -> bool:
    """Whether a (28, 28) view is (nearly) one flat shade: a blank or uniform image, nothing in it to classify."""
    return int(pixels.max()) - int(pixels.min()) < BLANK_RANGE


ACCEPTED = (
    "image file paths, PIL images, arrays or torch tensors: (28, 28) or (N, 28, 28) as the dataset's (uint8 "
    "0-255, or floats in [0, 1]; light object on dark), or a photo's (H, W) or (H, W, 3) uint8 pixels"
)


def as_pixels(images) -> np.ndarray:
    """(N, 28, 28) uint8 from what users hold: file paths (or one), PIL images (or one), numpy arrays or torch
    tensors, one image or a batch (ACCEPTED). Dataset-style arrays are taken as they are (floats in [0, 1]
    scaled to 0-255); photos, whether files, PIL images or other-sized arrays, are preprocessed as the
    dataset was made. Anything else: a TypeError or InputError saying what is accepted."""
    if hasattr(images, "detach") and hasattr(images, "numpy"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    if isinstance(images, PIL.Image.Image):
        return preprocess(images)[None]
    if isinstance(images, np.ndarray):
        return array_pixels(images)
    if isinstance(images, str | Path):
        images = [images]
    if isinstance(images, list | tuple) and images and all(isinstance(i, str | Path) for i in images):
        return np.stack([preprocess(open_image(Path(p), str(p))) for p in images])
    if isinstance(images, list | tuple) and images and all(isinstance(i, PIL.Image.Image) for i in images):
        return np.stack([preprocess(image) for image in images])
    raise TypeError(f"cannot predict {type(images).__name__}: give {ACCEPTED}")


def array_pixels(images: np.ndarray) -> np.ndarray:
    """Dataset-style (N, 28, 28) uint8 from an array: as ACCEPTED says, else an InputError naming the shape."""
    side = fashion.IMAGE_SIZE
    if images.ndim >= 3 and images.shape[-1] == 1 and images.shape[-3:-1] == (side, side):
        images = images[..., 0]  # (.., 28, 28, 1): a channel of one
    if images.ndim in (2, 3) and images.shape[-2:] == (side, side):
        if images.dtype == np.uint8:
            return images.reshape(-1, side, side)
        if np.issubdtype(images.dtype, np.floating):
            if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
                raise errors.InputError("float images must hold values in [0, 1] (uint8 arrays: 0-255)")
            return np.rint(images * 255).astype(np.uint8).reshape(-1, side, side)
    elif images.dtype == np.uint8 and (images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4))):
        return preprocess(PIL.Image.fromarray(images))[None]  # a photo's pixels
    raise errors.InputError(f"an array of shape {images.shape} and type {images.dtype}: give {ACCEPTED}")


def save_view(pixels: np.ndarray, path: Path) -> Path:
    """The 28x28 view the model sees, as a PNG (written atomically)."""
    return files.write_atomic(path, lambda tmp: PIL.Image.fromarray(pixels).save(tmp, "PNG"))


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory contributes its image files, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def preprocessed_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct file name for each image's 28x28 view: a/shoe.png and b/shoe.png must not overwrite."""
    names, taken = {}, set()
    for path in paths:
        name, count = f"{path.stem}.28x28.png", 1
        while name in taken:
            count += 1
            name = f"{path.stem}-{count}.28x28.png"
        taken.add(name)
        names[path] = name
    return names
