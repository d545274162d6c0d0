"""Reference tier: register small MobileNetV5 encoders with timm, described by block-spec strings.

Convention (shared with minig3n/mobilenetv5.py): ``vision_config.architecture`` names
``ARCH_NAME`` and ``vision_config.model_args`` carries ``arch_def`` (a list of stages, each a list of timm
block strings such as ``"uir_r1_a3_k5_s2_e6_c24"``) and ``stem_size``. Everything else is as in
``mobilenetv5_300m_enc``: TF-"same" padding, RmsNorm2d, GELU (tanh), layer scale, MSFA on the last two
feature maps to 2048 x 16 x 16 (``msfa_output_resolution`` may be overridden in model_args too).

Call ``register()`` (or just import this module: it registers on import) before building a reference model
from such a config.
"""
from functools import partial

from timm.layers import RmsNorm2d
from timm.models._efficientnet_builder import round_channels
from timm.models._efficientnet_builder import decode_arch_def
from timm.models._registry import register_model, is_model
from timm.models.mobilenetv5 import _GELU, _create_mnv5_encoder

ARCH_NAME = "mobilenetv5_custom_enc"


def _mobilenetv5_custom_enc(pretrained=False, arch_def=None, stem_size=64, **kwargs):
    """MobileNetV5 encoder built from ``arch_def`` block strings with mobilenetv5_300m_enc's settings."""
    if arch_def is None:
        raise ValueError(f"{ARCH_NAME} needs model_args.arch_def (list of stages of block strings)")
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def),
        stem_size=stem_size,
        fix_stem=False,
        round_chs_fn=partial(round_channels, multiplier=1.0),
        norm_layer=RmsNorm2d,
        act_layer=_GELU,
        layer_scale_init_value=1e-5,
        pad_type=kwargs.pop("pad_type", "same"),
    )
    model_kwargs.update(kwargs)
    # use mobilenetv5_300m_enc's pretrained cfg entry (input 768, mean 0, std 1) as the variant's
    return _create_mnv5_encoder("mobilenetv5_300m_enc", pretrained, **model_kwargs)


def register() -> str:
    """Register ``ARCH_NAME`` with timm (idempotent); returns the name."""
    if not is_model(ARCH_NAME):
        _mobilenetv5_custom_enc.__name__ = ARCH_NAME
        register_model(_mobilenetv5_custom_enc)
    return ARCH_NAME


register()
