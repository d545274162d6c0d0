"""Image preprocessing: any picture -> the ``pixel_values`` the vision encoder reads ([B, 3, 768, 768]).

The idea: Gemma 3n's processor does almost nothing to an image. It converts it to RGB, resizes it to
exactly 768 x 768 (aspect ratio ignored, no crop) with PIL's BILINEAR filter, and multiplies by 1/255.
There is **no mean/std normalisation** (the checkpoint's ``preprocessor_config.json`` says
``do_normalize: false``; its ``image_mean``/``image_std`` of 0.5 are unused). Channels come first, in RGB
order, as float32 in [0, 1].

RGB conversion, as transformers 5.24 does it (``image_transforms.convert_to_rgb`` and ``load_image``):

* a PIL image with transparency (an ``A`` band: RGBA, LA, PA; or a palette/grey image with a
  ``transparency`` entry) is composited **onto white**, then made RGB; any other mode (L, P, CMYK, I;16,
  I, F, 1, YCbCr, ...) goes through ``Image.convert("RGB")`` (16-bit and 32-bit values saturate at 255);
* an image given as a **file path** is opened, rotated upright by its EXIF orientation, and converted with
  ``convert("RGB")`` directly, so its alpha channel is *dropped, not composited* (the reference's
  ``load_image`` does that; a PIL image you open yourself and pass in is composited onto white instead);
* an array (H, W, C) or (C, H, W) with C in 1, 3, 4 and whole values 0..255: one channel is repeated three
  times, four channels are composited onto white as ``round(a/255 * rgb + (1 - a/255) * 255)``.

Resizing and scaling follow the reference's PIL backend (``SiglipImageProcessorPil``) bit for bit:
``PIL.Image.resize((768, 768), BILINEAR)`` on the uint8 RGB image, then
``float32(float64(v) * rescale_factor)``. The default torchvision backend (``SiglipImageProcessor``)
resizes uint8 tensors with its own antialiased bilinear kernel; its output differs from the PIL backend
by up to a few 1/255 steps (see tests/test_ref_vision_image.py for the measured figure).

Settings come from the checkpoint's ``preprocessor_config.json`` when you pass its directory (or the
file); keys it does not set take ``SiglipImageProcessor``'s class defaults (224 x 224, BICUBIC,
normalisation on), exactly as the reference would. With no config at all, the official Gemma 3n values
are used.

Source: transformers 5.24 ``image_processing_backends.PilBackend`` / ``TorchvisionBackend``,
``image_transforms.convert_to_rgb``, ``image_utils.load_image``, ``models/siglip/image_processing_*``;
the converter (``convert_gemma3n_weights.py``) for the official settings.
Left out: URLs and base64 strings (local files only), center crop, padding, shortest-edge resizing
(Gemma 3n uses none), float arrays (pass uint8; the reference would read [0, 1] floats as already scaled
and divide by 255 twice).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError


@dataclass
class ImageConfig:
    """The image-processor settings. Defaults = the official Gemma 3n ``preprocessor_config.json``."""

    do_resize: bool = True
    height: int = 768
    width: int = 768
    resample: int = 2                      # PIL code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        """Read a ``preprocessor_config.json`` dict. Keys that are absent or null take the reference class's
        defaults (``SiglipImageProcessor``: 224 x 224, BICUBIC, rescale 1/255, normalise with mean/std 0.5)."""
        siglip = dict(do_resize=True, height=224, width=224, resample=3, do_rescale=True, rescale_factor=1 / 255,
                      do_normalize=True, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), do_convert_rgb=True)
        for key in ("do_center_crop", "do_pad"):
            if d.get(key):
                raise ConfigError(f"preprocessor_config.json: '{key}' is true; Gemma 3n's processor does not use it "
                                  "and minig3n does not implement it")
        size = d.get("size")
        if size is not None:
            if not (isinstance(size, dict) and set(size) >= {"height", "width"}):
                raise ConfigError(f"preprocessor_config.json: 'size' must be {{'height': H, 'width': W}}, got {size!r}")
            siglip["height"], siglip["width"] = size["height"], size["width"]
        for key in ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                    "image_std", "do_convert_rgb"):
            if d.get(key) is not None:
                siglip[key] = d[key]
        cfg = cls(**siglip)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not (int(self.height) >= 1 and int(self.width) >= 1):
            raise ConfigError(f"image size must be positive, got {self.height} x {self.width}")
        if int(self.resample) not in range(6):
            raise ConfigError(f"'resample' must be a PIL filter code 0..5, got {self.resample!r}")
        for key in ("image_mean", "image_std"):
            v = getattr(self, key)
            v = (v,) * 3 if isinstance(v, (int, float)) else tuple(v)
            if len(v) != 3:
                raise ConfigError(f"'{key}' needs 3 values (one per RGB channel), got {v!r}")
            setattr(self, key, tuple(float(x) for x in v))


def load_image_config(source=None) -> ImageConfig:
    """``None`` -> official defaults; an ImageConfig -> itself; a dict -> ``from_dict``; a checkpoint directory
    -> its ``preprocessor_config.json`` (official defaults if the directory has none); a .json file -> it."""
    if source is None:
        return ImageConfig()
    if isinstance(source, ImageConfig):
        return source
    if isinstance(source, dict):
        return ImageConfig.from_dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "preprocessor_config.json"
        if not path.exists():
            return ImageConfig()
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: preprocessor config not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a JSON preprocessor config") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON preprocessor config ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ImageConfig.from_dict(d)


# ----------------------------------------------------------------------------------------------------
# Any input -> uint8 RGB [H, W, 3]
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# RGB -> pixel_values
# ----------------------------------------------------------------------------------------------------

def preprocess_image(image, config=None) -> np.ndarray:
    """One image -> float32 pixel values [3, H, W] (768 x 768 with the official settings)."""
    from PIL import Image

    cfg = load_image_config(config)
    rgb = to_rgb(image, cfg.do_convert_rgb)                                     # [Y, X, 3] uint8
    if cfg.do_resize:
        resized = Image.fromarray(rgb).resize((int(cfg.width), int(cfg.height)), resample=int(cfg.resample))
        rgb = np.array(resized)                                                 # [H, W, 3] uint8
    x = np.moveaxis(rgb, -1, 0)                                                 # [3, H, W] uint8
    if cfg.do_rescale:
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)      # [3, H, W]
    if cfg.do_normalize:
        x = x.astype(np.float32, copy=False)
        mean = np.array(cfg.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(cfg.image_std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std                                                    # [3, H, W]
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_images(images, config=None) -> np.ndarray:
    """A list of images (or one image) -> float32 ``pixel_values`` [B, 3, H, W]."""
    cfg = load_image_config(config)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError("no images given")
    out = [preprocess_image(im, cfg) for im in images]
    if len({o.shape for o in out}) > 1:
        raise InputError(f"images of different sizes cannot be batched with do_resize off: "
                         f"{sorted({o.shape for o in out})}")
    return np.stack(out)                                                        # [B, 3, H, W]
