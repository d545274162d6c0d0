"""The seam between the vision tests and minig3n.mobilenetv5 / minig3n.image. Every call goes through
``impl(<module>)``: minig3n's function, or a student's re-implementation when ``MINIG3N_STUDENT`` names a
directory holding ``mobilenetv5.py`` / ``image.py`` (tests/adapters/_impl.py). Arrays are NCHW; ``p`` maps
timm state-dict names (relative to the module at hand) to arrays; ``vision_cfg`` is a
``minig3n.config.VisionConfig`` or a dict of its keys."""
from __future__ import annotations

from tests.adapters._impl import impl

mv, image = impl("mobilenetv5"), impl("image")


def _pil_backend(config):
    """The image goldens and live checks here are the reference's PIL backend (SiglipImageProcessorPil):
    pin minig3n's image config to it (a student's image.py without backends is called as is)."""
    cfg = image.load_image_config(config)
    if hasattr(cfg, "backend"):
        from dataclasses import replace
        cfg = replace(cfg, backend="pil")
    return cfg


def run_same_padding(n, k, stride, dilation=1) -> tuple:
    return mv.same_padding(n, k, stride, dilation)


def run_conv2d(x, w, stride=1, dilation=1, bias=None):
    return mv.conv2d(x, w, stride, dilation, bias)


def run_depthwise_conv2d(x, w, stride=1, dilation=1):
    return mv.depthwise_conv2d(x, w, stride, dilation)


def run_rms_norm2d(x, w, eps=1e-6):
    return mv.rms_norm2d(x, w, eps)


def run_make_divisible(v) -> int:
    return mv.make_divisible(v)


def run_block_summary(vision_cfg) -> list:
    """[[(kind, in, out, stride, dilation, has_skip, mid, dw_start, dw_mid, dw_end, heads, key_dim, kv_stride),
    ...] per stage], plus the stem width and the MSFA (taps, in, mid, out, resolution) as the last entry."""
    s = mv.encoder_spec(vision_cfg)
    stages = [[(b.kind, b.in_chs, b.out_chs, b.stride, b.dilation, b.has_skip, b.mid_chs, b.dw_start, b.dw_mid,
                b.dw_end, b.num_heads, b.key_dim, b.kv_stride) for b in st] for st in s.stages]
    return stages + [(s.stem_chs, tuple(s.msfa_taps), s.msfa_in_chs, s.msfa_mid_chs, s.msfa_out_chs,
                      tuple(s.msfa_resolution))]


def run_weight_shapes(vision_cfg, prefix="") -> dict:
    return mv.vision_weight_shapes(vision_cfg, prefix)


def run_stem(x, p):
    """p: the tensors under ``conv_stem`` (``conv.weight``, ``conv.bias``, ``bn.weight``)."""
    return mv.stem(x, p)


def run_block(x, p, vision_cfg, stage: int, index: int):
    """Block ``blocks.<stage>.<index>`` of the encoder described by ``vision_cfg``; p: its tensors."""
    b = mv.encoder_spec(vision_cfg).stages[stage][index]
    block = {"er": mv.edge_residual, "uir": mv.universal_inverted_residual, "mqa": mv.mobile_mqa}[b.kind]
    return block(x, p, b)


def run_msfa(features, p, vision_cfg):
    """features: the tapped stage outputs, finest first; p: the tensors under ``msfa``."""
    return mv.msfa(features, p, mv.encoder_spec(vision_cfg))


def run_vision_encoder(pixel_values, p, vision_cfg, trace=None):
    """The whole tower; ``trace`` receives outputs keyed by their path relative to ``timm_model``
    (``conv_stem``, ``blocks.s.b``, ``msfa``)."""
    raw = {} if trace is not None else None
    out = mv.vision_encoder(pixel_values, p, vision_cfg, trace=raw, prefix="")
    if trace is not None:
        trace.update({k[1:]: v for k, v in raw.items()})
    return out


def run_image_soft_tokens(features, p_embed_vision, vision_cfg=None):
    return mv.image_soft_tokens(features, p_embed_vision, vision_cfg)


def run_preprocess_image(img, config=None, backend="pil"):
    """One image (path, PIL image or array) -> float32 [3, H, W]; ``backend`` "pil" (the default here: the
    goldens of test_vision_image.py) or "torchvision"."""
    if backend == "pil":
        return image.preprocess_image(img, _pil_backend(config))
    return image.preprocess_image(img, config, backend=backend)


def run_preprocess_images(images, config=None):
    return image.preprocess_images(images, _pil_backend(config))


def run_load_image_config(source=None):
    return image.load_image_config(source)


def run_gelu(x):
    return mv.gelu(x)


def run_checkpoint_vision(model_dir):
    """(vision config, tower params, embed_vision params, expected tower shapes) of a checkpoint directory;
    raises CheckpointError if a tensor the config implies is missing or misshapen."""
    from minig3n.checkpoint import Checkpoint

    ck = Checkpoint(model_dir)
    prefix = mv.PREFIX
    shapes = mv.vision_weight_shapes(ck.config.vision, prefix + ".")
    ck.check_shapes(shapes)
    return ck.config, ck.params(prefix), ck.params("model.embed_vision"), shapes
