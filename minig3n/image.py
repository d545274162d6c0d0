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
  listed in ``image_torchvision.py``);
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .image_rgb import MAX_PIXELS, _array_to_rgb, _pil_to_rgb, check_pixel_count, open_image, to_rgb

__all__ = ["BACKENDS", "ImageConfig", "load_image_config", "open_image", "to_rgb", "preprocess_image",
           "preprocess_images", "MAX_PIXELS", "check_pixel_count", "_array_to_rgb", "_pil_to_rgb"]


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
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a JSON preprocessor config") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON preprocessor config ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ImageConfig.from_dict(d)


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
        from .image_torchvision import preprocess_torchvision
        return preprocess_torchvision(image, cfg)
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
