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

Two backends, as the reference has (``backend=`` here, ``AutoProcessor.from_pretrained(d, backend=...)``
there), each reproduced bit for bit:

* ``"torchvision"`` (the default, as the reference's: ``SiglipImageProcessor``): files decoded as
  ``torchvision.io.decode_image`` does, torch's integer antialiased resize, float32 rescaling (details
  above ``_preprocess_torchvision``, below);
* ``"pil"`` (``SiglipImageProcessorPil``): ``PIL.Image.resize((768, 768), BILINEAR)`` on the uint8 RGB
  image, then ``float32(float64(v) * rescale_factor)``.

The two differ by up to a few 1/255 steps per pixel (more for 16-bit PNG files, which torchvision does not
reduce to 8 bits), enough to change greedy tokens of a random multimodal model; compare against the backend
the other side used.

Settings come from the checkpoint's ``preprocessor_config.json`` when you pass its directory (or the
file); keys it does not set take ``SiglipImageProcessor``'s class defaults (224 x 224, BICUBIC,
normalisation on), exactly as the reference would. With no config at all, the official Gemma 3n values
are used.

Source: transformers 5.24 ``image_processing_backends.PilBackend`` / ``TorchvisionBackend``,
``image_transforms.convert_to_rgb``, ``image_utils.load_image``, ``models/siglip/image_processing_*``;
the converter (``convert_gemma3n_weights.py``) for the official settings.
Left out: URLs and base64 strings (local files only), center crop, padding, shortest-edge resizing
(Gemma 3n uses none); in the torchvision backend filters other than BILINEAR / BICUBIC and 16-bit colour
PNG files; float arrays (pass uint8; the reference would read [0, 1] floats as already scaled
and divide by 255 twice).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError


BACKENDS = ("torchvision", "pil")


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
    backend: str = "torchvision"           # which reference backend to reproduce: "torchvision" (its default) or "pil"

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
        if self.backend not in BACKENDS:
            raise ConfigError(f"image backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
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
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON preprocessor config ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ImageConfig.from_dict(d)


# ----------------------------------------------------------------------------------------------------
# Any input -> uint8 RGB [H, W, 3]
# ----------------------------------------------------------------------------------------------------

def open_image(path):
    """A file -> an upright RGB PIL image (``transformers.image_utils.load_image``: EXIF transpose, then
    ``convert("RGB")``, which drops any alpha channel)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
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

def preprocess_image(image, config=None, backend=None) -> np.ndarray:
    """One image -> float32 pixel values [3, H, W] (768 x 768 with the official settings).

    backend: "torchvision" (the reference's default) or "pil"; None = the config's (default torchvision)."""
    cfg = load_image_config(config)
    backend = cfg.backend if backend is None else backend
    if backend not in BACKENDS:
        raise InputError(f"image backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torchvision":
        return _preprocess_torchvision(image, cfg)
    from PIL import Image

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


def preprocess_images(images, config=None, backend=None) -> np.ndarray:
    """A list of images (or one image) -> float32 ``pixel_values`` [B, 3, H, W]."""
    cfg = load_image_config(config)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError("no images given")
    out = [preprocess_image(im, cfg, backend) for im in images]
    if len({o.shape for o in out}) > 1:
        raise InputError(f"images of different sizes cannot be batched with do_resize off: "
                         f"{sorted({o.shape for o in out})}")
    return np.stack(out)                                                        # [B, 3, H, W]


# ----------------------------------------------------------------------------------------------------
# The torchvision backend (SiglipImageProcessor, the reference's default)
# ----------------------------------------------------------------------------------------------------
# What it does differently from the PIL backend, step by step (transformers 5.24 TorchvisionBackend, torchvision
# 0.29 resize, torch 2.14's uint8 antialiased interpolation):
#
# * files are decoded by torchvision.io.decode_image(mode=RGB, EXIF applied): alpha is dropped (a palette entry
#   marked transparent keeps its palette colour, no white), and a 16-bit PNG keeps its 16-bit values;
# * a PIL image is converted exactly as the PIL backend does (transparency onto white);
# * a 4-channel array is composited onto white in float32 and truncated: ``uint8(f32(rgb/255 * a + (1 - a)) *
#   255.999)`` (the PIL path rounds);
# * uint8 images are resized by torch's integer kernel: the filter weights (triangle for BILINEAR, Keys cubic
#   a = -0.5 for BICUBIC, widened by the scale when shrinking) are normalised in float64, then stored as int16
#   with as many fraction bits as the largest weight allows (at most 22), each pass (width, then height) rounds
#   back to uint8: ``clip((sum(w * v) + 2**(bits - 1)) >> bits, 0, 255)``. PIL uses the same filters with 22
#   bits everywhere, which is why the two backends differ by up to a few 1/255 steps. (That kernel runs on CPUs
#   with AVX2 / AVX-512 and on ARM; elsewhere torchvision resizes in float32 and rounds.) A 16-bit image is
#   resized in float32 and truncated (``_resize_float32``);
# * rescaling is ``float32(v) * float32(rescale_factor)`` in float32; with normalisation as well, the two are
#   fused: ``(float32(v) - mean * 255) / (std * 255)``.


def _png_bit_depth(path) -> int | None:
    """Bit depth and colour type of a PNG file from its IHDR chunk, or None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def decode_like_torchvision(path) -> np.ndarray:
    """A file -> the array ``torchvision.io.decode_image(path, ImageReadMode.RGB, apply_exif_orientation=True)``
    holds, [H, W, 3]: uint8, or uint16 for a 16-bit greyscale PNG."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputError(f"image file not found: {p}")
    png = _png_bit_depth(p)
    try:
        with Image.open(p) as im:
            im.load()
            if im.format not in ("PNG", "JPEG", "GIF", "WEBP"):
                raise InputError(f"{p}: the torchvision image backend decodes PNG, JPEG, GIF and WebP files only "
                                 f"(this is {im.format}); use the PIL backend")
            im = ImageOps.exif_transpose(im)
            if png is not None and png[0] == 16:
                if png[1] != 0:
                    raise InputError(f"{p}: a 16-bit colour PNG keeps 16-bit values in the torchvision backend, "
                                     "which minig3n reproduces for greyscale only; use the PIL backend")
                g = np.array(im).astype(np.uint16)                               # [H, W] 16-bit grey
                return np.repeat(g[..., None], 3, axis=-1)                       # [H, W, 3] uint16
            return np.array(im.convert("RGB"))                                   # [H, W, 3] uint8, alpha dropped
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image file {p}: {e}") from None


def _to_rgb_torchvision(image, convert_rgb: bool) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return decode_like_torchvision(image)
    from PIL import Image
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, convert_rgb)
    if not (isinstance(image, np.ndarray) or hasattr(image, "__array__")):
        return to_rgb(image, convert_rgb)                      # the same error for anything else
    a = np.asarray(image)
    if not convert_rgb or a.ndim != 3:
        return _array_to_rgb(a, convert_rgb)                 # same checks and errors as the PIL backend
    hwc = np.moveaxis(a, 0, -1) if a.shape[0] in (1, 3, 4) else a
    if hwc.shape[-1] != 4:
        return _array_to_rgb(a, convert_rgb)
    _array_to_rgb(a, convert_rgb)                             # validates (dtype, range, emptiness)
    f = np.float32
    x = hwc.astype(f) * f(1 / 255)                                               # [H, W, 4] float32
    alpha = x[..., 3:]
    out = x[..., :3] * alpha + (f(1) - alpha)                                    # [H, W, 3] float32
    return (out * f(255 + 1.0 - 1e-3)).astype(np.uint8)                         # truncation, as .to(uint8)


def _filter(resample: int):
    """(half width, kernel) of torch's antialiased filters in float64: 2 = BILINEAR (triangle), 3 = BICUBIC
    (Keys, a = -0.5)."""
    if resample == 2:
        return 1.0, lambda x: np.maximum(1.0 - np.abs(x), 0.0)
    a = -0.5

    def cubic(x):
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    return 2.0, cubic


def _fma32(a, b, c):
    """float32 fused multiply-add, round(a * b + c) once (the product of two float32 values is exact in float64)."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def _kernel32(resample: int, x):
    """The filters as torch's float32 kernels evaluate them (compiled with FMA contraction)."""
    f = np.float32
    x = np.abs(x).astype(f)
    if resample == 2:
        return np.where(x < 1, (1.0 - x.astype(np.float64)).astype(f), f(0))
    A = f(-0.5)
    near = _fma32(_fma32(A + f(2), x, -(A + f(3))) * x, x, f(1))
    far = _fma32(_fma32(_fma32(A, x, -(f(5) * A)), x, f(8) * A), x, -(f(4) * A))
    return np.where(x < 1, near, np.where(x < 2, far, f(0))).astype(f)


def _filter_weights(n_in: int, n_out: int, resample: int) -> list:
    """Per output pixel (first input index, normalised float64 weights), as torch's ``_compute_weights_aa``."""
    half, kernel = _filter(resample)
    scale = n_in / n_out
    support = half * scale if scale >= 1.0 else half
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = kernel((np.arange(lo, hi) - center + 0.5) * invscale)
        total = w.sum()
        rows.append((lo, w / total if total != 0 else w))
    return rows


def _filter_weights32(n_in: int, n_out: int, resample: int) -> list:
    """The same in float32, with the C++ promotions (center and arguments computed in float64, then rounded)."""
    f = np.float32
    half = 1.0 if resample == 2 else 2.0
    scale = f(n_in) / f(n_out)
    support = f(half * np.float64(scale)) if scale >= 1 else f(half)
    invscale = f(1.0 / np.float64(scale)) if scale >= 1 else f(1.0)
    rows = []
    for i in range(n_out):
        center = f(np.float64(scale) * (i + 0.5))
        lo = max(int(np.float64(center) - np.float64(support) + 0.5), 0)
        hi = min(int(np.float64(center) + np.float64(support) + 0.5), n_in)
        arg = ((np.arange(lo, hi).astype(f) - center).astype(np.float64) + 0.5) * np.float64(invscale)
        w = _kernel32(resample, arg.astype(f))
        total = f(0)
        for v in w:                                    # a sequential float32 sum
            total = f(total + v)
        rows.append((lo, (w / total).astype(f) if total != 0 else w))
    return rows


def _taps(rows, dtype):
    """Per-output (first index, weights) rows -> index [n_out, K] and weight [n_out, K] arrays, zero-padded to
    the longest row (a zero weight adds nothing, also to a float32 chain of multiply-adds)."""
    K = max(len(w) for _, w in rows)
    idx = np.zeros((len(rows), K), np.int64)
    wts = np.zeros((len(rows), K), dtype)
    for i, (lo, w) in enumerate(rows):
        idx[i, :len(w)] = lo + np.arange(len(w))
        idx[i, len(w):] = lo
        wts[i, :len(w)] = w
    return idx, wts


def _int16_weights(n_in: int, n_out: int, resample: int):
    """The int16 fixed-point weights (as int32 taps: index [n_out, K], weight [n_out, K]) and their number of
    fraction bits."""
    rows = _filter_weights(n_in, n_out, resample)
    w_max = max(float(w.max()) for _, w in rows)
    bits = 0
    while bits < 22 and int(0.5 + w_max * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    fixed = []
    for lo, w in rows:
        scaled = w * (1 << bits)
        fixed.append((lo, np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5))))
    idx, wts = _taps(fixed, np.int32)
    return idx, wts, bits


def _resize_uint8(rgb, height: int, width: int, resample: int) -> np.ndarray:
    """torch's uint8 antialiased resize (see above).   [Y, X, 3] uint8 -> [H, W, 3] uint8"""
    x = rgb
    for axis, n_out in ((1, width), (0, height)):        # width pass first, then height
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        idx, wts, bits = _int16_weights(n_in, n_out, resample)                    # [n_out, K] each
        v = np.moveaxis(x, axis, -1)                                              # [..., n_in] uint8
        acc = np.full(v.shape[:-1] + (n_out,), 1 << (bits - 1), np.int32)         # [..., n_out]
        for k in range(idx.shape[1]):                   # exact integer sums (|sum| < 2**31)
            acc += v[..., idx[:, k]].astype(np.int32) * wts[:, k]
        x = np.moveaxis(np.clip(acc >> bits, 0, 255).astype(np.uint8), -1, axis)
    return x


def _resize_float32(img, height: int, width: int, resample: int) -> np.ndarray:
    """torch's float32 antialiased resize (float32 weights, each sum a chain of fused multiply-adds in index
    order), then converted back to the image's dtype: torchvision rounds only for uint8 and the signed integer
    types, so a uint16 image is *truncated* (``.to(torch.uint16)``).   [Y, X, 3] -> [H, W, 3]"""
    dtype = img.dtype
    x = img.astype(np.float32)
    for axis, n_out in ((1, width), (0, height)):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        idx, wts = _taps(_filter_weights32(n_in, n_out, resample), np.float32)    # [n_out, K] each
        v = np.moveaxis(x, axis, -1)                                              # [..., n_in]
        acc = v[..., idx[:, 0]] * wts[:, 0]                                       # [..., n_out]
        for k in range(1, idx.shape[1]):
            acc = _fma32(v[..., idx[:, k]], wts[:, k], acc)
        x = np.moveaxis(acc, -1, axis)
    return np.trunc(x).astype(dtype)         # uint16: no rounding, no clamping in torchvision


def _preprocess_torchvision(image, cfg: ImageConfig) -> np.ndarray:
    rgb = _to_rgb_torchvision(image, cfg.do_convert_rgb)                         # [Y, X, 3] uint8 | uint16
    if cfg.do_resize and rgb.shape[:2] != (int(cfg.height), int(cfg.width)):
        if int(cfg.resample) not in (2, 3):
            raise ConfigError(f"'resample' {cfg.resample}: minig3n's torchvision image backend reproduces BILINEAR (2) "
                              "and BICUBIC (3) only; use the PIL backend")
        resize = _resize_uint8 if rgb.dtype == np.uint8 else _resize_float32
        rgb = resize(rgb, int(cfg.height), int(cfg.width), int(cfg.resample))   # [H, W, 3]
    x = np.moveaxis(rgb, -1, 0).astype(np.float32)                               # [3, H, W] float32
    f = np.float32
    if cfg.do_rescale and cfg.do_normalize:                 # fused: (v - mean / s) / (std / s), s = rescale_factor
        mean = (np.array(cfg.image_mean, f) * f(1.0 / cfg.rescale_factor))[:, None, None]
        std = (np.array(cfg.image_std, f) * f(1.0 / cfg.rescale_factor))[:, None, None]
        x = (x - mean) / std
    elif cfg.do_normalize:
        x = (x - np.array(cfg.image_mean, f)[:, None, None]) / np.array(cfg.image_std, f)[:, None, None]
    elif cfg.do_rescale:
        x = x * f(cfg.rescale_factor)
    return np.ascontiguousarray(x, dtype=np.float32)
