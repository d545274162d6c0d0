"""Any picture -> uint8 RGB [H, W, 3]: the reference's RGB conversion rules (``image.py``'s docstring lists them),
and the pixel-count limit every image reader applies.

Source: transformers 5.24 ``image_transforms.convert_to_rgb`` and ``image_utils.load_image``.
Left out: URLs and base64 strings (local files only).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import InputError

MAX_PIXELS = 50_000_000     # 50 megapixels (~8660 x 5770): Pillow refuses only above 2 x 89.5 M; the model
                            # sees 768 x 768, so a larger picture only costs memory (4 bytes a pixel, and more)


def check_pixel_count(width: int, height: int, what: str = "image") -> None:
    """Refuse an image above MAX_PIXELS before its pixels are decoded (a small PNG can claim 12000 x 12000)."""
    if width * height > MAX_PIXELS:
        raise InputError(f"{what}: image is {width} x {height} = {width * height / 1e6:.1f} megapixels; minig3n "
                         f"reads at most {MAX_PIXELS / 1e6:.0f} megapixels (the model sees "
                         "768 x 768): downscale it first")


def open_image(path):
    """A file -> an upright RGB PIL image (``transformers.image_utils.load_image``: EXIF transpose, then
    ``convert("RGB")``, which drops any alpha channel)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    if os.path.isdir(p):
        raise InputError(f"{p}: is a directory, expected an image file")
    if not os.path.isfile(p):
        raise InputError(f"image file not found: {p}")
    try:
        with warnings.catch_warnings():                # Pillow's bomb warning: we refuse far below it, by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)                         # reads the header only: size is known, pixels are not
        with im:
            check_pixel_count(im.width, im.height, p)
            im.load()
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image file {p}: {e}") from None


def _pil_to_rgb(im, convert_rgb: bool) -> np.ndarray:
    """A PIL image -> uint8 [H, W, 3], transparency composited onto white (``convert_to_rgb``)."""
    from PIL import Image

    if im.width == 0 or im.height == 0:
        raise InputError(f"image is empty: {im.width} x {im.height} pixels")
    check_pixel_count(im.width, im.height)
    if not convert_rgb:
        a = np.array(im)
        if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise InputError(f"do_convert_rgb is off, so the image must already be 8-bit RGB; got mode {im.mode}")
        return a
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))       # [H, W, 3]
    return np.array(im.convert("RGB"))                                           # [H, W, 3]


def _array_to_rgb(a, convert_rgb: bool) -> np.ndarray:
    """An array (H, W, C) or (C, H, W), C in 1/3/4, whole values 0..255 -> uint8 [H, W, 3]."""
    a = np.asarray(a)
    if a.ndim != 3:
        hint = " (add a channel axis for greyscale)" if a.ndim == 2 else ""
        raise InputError(f"an image array must have 3 axes, (height, width, channels) or (channels, height, "
                         f"width), got shape {list(a.shape)}{hint}")
    # channel axis as the reference infers it: first if it has 1/3/4 entries, else last
    if a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)                                               # [H, W, C]
    elif a.shape[-1] not in (1, 3, 4):
        raise InputError(f"cannot find the channel axis of an image array of shape {list(a.shape)}: "
                         "it needs 1, 3 or 4 entries, first or last")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image is empty: shape {list(a.shape)}")
    if a.dtype.kind not in "iub":
        raise InputError(f"image arrays must hold integers 0..255 (uint8), got dtype {a.dtype}; a float image in "
                         "[0, 1] would be divided by 255 twice by the reference, so convert it first")
    if a.min() < 0 or a.max() > 255:
        raise InputError(f"image array values must lie in 0..255, got [{a.min()}, {a.max()}]")
    a = a.astype(np.uint8)
    C = a.shape[-1]
    if not convert_rgb:
        if C != 3:
            raise InputError(f"do_convert_rgb is off, so the array must have 3 channels, got {C}")
        return a
    if C == 1:
        return np.repeat(a, 3, axis=-1)                                         # [H, W, 3]
    if C == 4:
        alpha = a[..., 3:4] / 255                                               # [H, W, 1] float64
        return np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)  # [H, W, 3]
    return a


def to_rgb(image, convert_rgb: bool = True) -> np.ndarray:
    """A path, a PIL image or an array -> uint8 RGB [H, W, 3] (before resizing)."""
    try:
        from PIL import Image
    except ImportError:  # pillow is a dependency; this only guards a broken install
        raise InputError("reading images needs pillow (pip install pillow)") from None
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(open_image(image), convert_rgb)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, convert_rgb)
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        return _array_to_rgb(np.asarray(image), convert_rgb)
    raise InputError(f"an image must be a file path, a PIL image or an array, got {type(image).__name__}")
