"""Deterministic test pictures for the image-preprocessing tests (both tiers): one per PIL mode the
processor must handle, at several sizes and aspect ratios, drawn from a fixed NumPy seed."""
from __future__ import annotations

import numpy as np


def make_images() -> dict:
    """name -> PIL image. Modes: RGB, RGBA (with partial transparency), LA, L, P (with and without a
    transparent palette entry), CMYK, I;16, 1; sizes from 1 x 1 to 97 x 53, landscape and portrait."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    u8 = lambda *s: rng.integers(0, 256, size=s, dtype=np.uint8)  # noqa: E731
    ims = {
        "rgb_40x30": Image.fromarray(u8(30, 40, 3)),
        "rgb_1x1": Image.fromarray(u8(1, 1, 3)),
        "rgb_97x53": Image.fromarray(u8(53, 97, 3)),
        "rgba_33x47": Image.fromarray(u8(47, 33, 4)),
        "la_25x25": Image.fromarray(u8(25, 25, 2)),
        "l_17x64": Image.fromarray(u8(64, 17)),
        "cmyk_31x19": Image.frombytes("CMYK", (31, 19), u8(19, 31, 4).tobytes()),
        "i16_28x22": Image.fromarray(rng.integers(0, 1200, size=(22, 28)).astype(np.uint16)),
        "bw_30x20": Image.fromarray(u8(20, 30) > 127).convert("1"),
    }
    pal = Image.frombytes("P", (36, 26), rng.integers(0, 16, size=(26, 36), dtype=np.uint8).tobytes())
    pal.putpalette(list(u8(16 * 3)))
    ims["p_36x26"] = pal
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    ims["p_transparent_36x26"] = pal_t
    return ims


def make_arrays() -> dict:
    """name -> uint8 array, in the layouts the processor accepts: HWC with 1/3/4 channels and CHW."""
    rng = np.random.default_rng(99)
    return {"hwc3_21x13": rng.integers(0, 256, (13, 21, 3), dtype=np.uint8),
            "hwc1_16x9": rng.integers(0, 256, (9, 16, 1), dtype=np.uint8),
            "hwc4_12x18": rng.integers(0, 256, (18, 12, 4), dtype=np.uint8),
            "chw3_15x11": rng.integers(0, 256, (3, 11, 15), dtype=np.uint8)}


# Small target sizes keep the fixtures tiny; the resize code path is the same as at 768 x 768.
SMALL_CONFIGS = {
    "bilinear": {"size": {"height": 20, "width": 24}, "resample": 2, "do_normalize": False,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255},
    # keys left out take SiglipImageProcessor's class defaults: BICUBIC, normalise with mean/std 0.5
    "siglip_defaults": {"size": {"height": 16, "width": 12}},
}

# The torchvision-backend fixture (tests/goldens/vision_image_torchvision.safetensors): the official Gemma 3n
# preprocessor_config.json at a small size (BILINEAR, rescale only), and the class defaults (BICUBIC, normalised).
TORCHVISION_CONFIGS = {
    "official_small": {"size": {"height": 20, "width": 24}, "resample": 2, "do_normalize": False,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_seq_length": 256,
                       "rescale_factor": 1 / 255, "do_rescale": True, "do_resize": True},
    "siglip_defaults": SMALL_CONFIGS["siglip_defaults"],
}


def write_image_files(directory) -> dict:
    """name -> path of the test pictures saved as files (PNG: RGBA, LA, palette with a transparent entry, L,
    16-bit grey, RGB; a JPEG with EXIF orientation 6; a PNG with EXIF orientation 6), the file cases both image
    tiers read. The same Pillow writes the same bytes, so a golden made from them holds on any machine with it."""
    from pathlib import Path

    from PIL import Image

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ims, out = make_images(), {}
    for name in ("rgba_33x47", "la_25x25", "p_transparent_36x26", "l_17x64", "i16_28x22", "rgb_97x53"):
        out[f"file_{name}"] = d / f"{name}.png"
        ims[name].save(out[f"file_{name}"])
    exif = Image.Exif()
    exif[0x0112] = 6
    out["file_rotated_jpg"] = d / "rotated.jpg"
    ims["rgb_40x30"].save(out["file_rotated_jpg"], exif=exif, quality=95)
    out["file_rotated_png"] = d / "rotated.png"
    Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10).save(out["file_rotated_png"], exif=exif)
    return {k: str(v) for k, v in out.items()}
