"""Image preprocessing as the reference's default torchvision backend does it (``SiglipImageProcessor``), bit for bit.

The idea: the same steps as the PIL backend (``image.py``): RGB, resize, rescale, but with torchvision's file
decoder, torch's integer antialiased resampling and float32 arithmetic; each rule is listed below. Selected
with ``image.preprocess_image(..., backend="torchvision")`` (the default, as in the reference).

Source: transformers 5.24 ``image_processing_backends.TorchvisionBackend`` and ``image_utils.load_image_as_tensor``;
torchvision 0.29 ``transforms.v2.functional.resize_image`` / ``to_dtype_image``; torch 2.14
``aten/src/ATen/native/cpu/UpSampleKernel.cpp`` (``_compute_weights_aa``, the int16 weights of the uint8 kernel).
Left out: filters other than BILINEAR and BICUBIC, 16-bit colour PNG files, AVIF/HEIC files, GPU resizing.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import ConfigError, InputError
from .image_rgb import _array_to_rgb, _pil_to_rgb, check_pixel_count, to_rgb

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
    if os.path.isdir(p):
        raise InputError(f"{p}: is a directory, expected an image file")
    if not os.path.isfile(p):
        raise InputError(f"image file not found: {p}")
    png = _png_bit_depth(p)
    try:
        with warnings.catch_warnings():                # Pillow's bomb warning: check_pixel_count refuses below it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)                         # the header only: the size is known, the pixels are not
        with im:
            check_pixel_count(im.width, im.height, p)
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


def preprocess_torchvision(image, cfg) -> np.ndarray:
    """One image -> float32 pixel values [3, H, W] with an ``image.ImageConfig``'s settings."""
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
