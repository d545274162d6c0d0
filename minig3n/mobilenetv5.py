"""MobileNetV5: Gemma 3n's vision encoder (an image -> 2048 x 16 x 16 feature map -> 256 soft tokens).

The idea: a convolutional network built from MobileNetV4 blocks, described by one short string per block
(timm's notation, e.g. ``"uir_r1_a5_k0_s1_e4_c640"``). A 3x3 stride-2 stem, then four stages that halve
the resolution at their first block: *edge residual* blocks (a full kxk conv that expands, then a 1x1
that projects), *universal inverted residual* blocks (1x1 expand and 1x1 project, each with an optional
depthwise conv before, between or after), and *mobile multi-query attention* blocks (many query heads,
one shared key/value head computed from a spatially down-sampled map). Every conv is followed by an
RMSNorm over the channels of each pixel (``RmsNorm2d``, eps 1e-6, ``x * w``, no ``1 + w``) and, where
stated, tanh-GELU. The last two stage outputs are fused by the *multi-scale fusion adapter* (MSFA):
nearest-upsample the coarse map, concatenate channels, a 1x1 expand/project FFN, pool to
``msfa_output_resolution`` (16), RMSNorm. The language model reads the 16 x 16 x 2048 map as 256 tokens
(``image_soft_tokens``).

Block strings (decoded by ``decode_block``; the reference decodes them with timm's own decoder)::

    er_r1_k3_s2_e4_c128        edge residual: conv k3 stride 2 expanding x4, 1x1 project to 128 channels
    uir_r1_a5_k5_p0_s2_e6_c640 universal inverted residual: depthwise a5 (start), 1x1 expand x6,
                               depthwise k5 (mid, stride 2), 1x1 project to 640, depthwise p (end; 0 = none)
    mqa_r1_k3_h12_v2_s1_d64_c640   multi-query attention: 12 query heads of width 64, one key/value head,
                               keys/values from a depthwise k3 stride-v (2) conv, output 640 channels
    r = repeats, s = stride (only the first block of a stage keeps it), "noskip" drops the residual.

Padding is TensorFlow's "SAME" (timm ``pad_type='same'``). For an input length n, kernel k, stride s,
dilation d: the output has ``ceil(n / s)`` positions and the input is padded by
``total = max((ceil(n/s) - 1) * s + (k - 1) * d + 1 - n, 0)`` zeros, ``total // 2`` before and the rest
after. At stride 1 with an odd kernel that is the familiar symmetric ``(k-1)/2`` on each side, but a
stride-2 conv on an even input pads **more at the bottom/right**: k3 on n=768 pads (0, 1), k5 pads (1, 2).
PyTorch-style symmetric padding shifts every strided conv by one pixel and is the classic porting bug.

Convolutions are written out in NumPy: a dense kxk conv gathers its k*k shifted views into columns
(im2col, ``np.lib.stride_tricks``) and does one matmul; a depthwise conv (one kxk filter per channel) is a
sum of k*k shifted views times per-channel taps, never a dense conv with a block-diagonal weight; a 1x1
conv is a matmul over channels. Arrays are NCHW ([B, C, Y, X]) like the reference's.

Source: timm 1.0.31 ``timm/models/mobilenetv5.py`` (``MobileNetV5Encoder``, the MSFA, the 300M arch table),
``_efficientnet_blocks.py`` (``EdgeResidual``, ``UniversalInvertedResidual``, ``MobileAttention``),
``_efficientnet_builder.py`` (string decoding, stride/dilation bookkeeping, feature taps),
``timm/layers`` (``RmsNorm2d``, ``MultiQueryAttention2d``, ``padding.get_same_padding``);
transformers 5.24 ``Gemma3nModel.get_image_features`` for ``image_soft_tokens``.
Left out: training-only parts (drop path, dropout), block kinds MobileNetV5 does not use (``ir``, ``ds``,
``cn``, ``mha``, squeeze-excite, grouped convs, mixed kernels, other activations), the classification head.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import accel
from .params import sub_params
from .errors import CheckpointError, ConfigError, InputError

PREFIX = "model.vision_tower.timm_model"
EPS = 1e-6                 # RmsNorm2d eps everywhere in MobileNetV5
MSFA_OUT_CHS = 2048        # timm fixes the encoder's output width (MobileNetV5Encoder.num_features)
OUTPUT_STRIDE = 32         # timm's EfficientNetBuilder(output_stride=32): later strides become dilation

# The published encoder (timm ``mobilenetv5_300m_enc``): 4 stages, 3 + 5 + 37 + 39 = 84 blocks.
_S2_ATTN = ["mqa_r1_k3_h12_v2_s1_d64_c640", "uir_r1_a0_k0_s1_e2_c640"]
_S3_ATTN = ["mqa_r1_k3_h16_s1_d96_c1280", "uir_r1_a0_k0_s1_e2_c1280"]
MOBILENETV5_300M_ARCH_DEF = [
    # stage 0: 128 channels at 1/4 resolution (192 x 192 for a 768 input)
    ["er_r1_k3_s2_e4_c128", "er_r1_k3_s1_e4_c128", "er_r1_k3_s1_e4_c128"],
    # stage 1: 256 channels at 1/8 (96 x 96)
    ["uir_r1_a3_k5_s2_e6_c256", "uir_r1_a5_k0_s1_e4_c256", "uir_r1_a3_k0_s1_e4_c256",
     "uir_r1_a5_k0_s1_e4_c256", "uir_r1_a3_k0_s1_e4_c256"],
    # stage 2: 640 channels at 1/16 (48 x 48); 14 attention + FFN pairs, keys/values at 24 x 24
    ["uir_r1_a5_k5_s2_e6_c640"] + ["uir_r1_a5_k0_s1_e4_c640"] * 7 + ["uir_r1_a0_k0_s1_e1_c640"]
    + _S2_ATTN * 14,
    # stage 3: 1280 channels at 1/32 (24 x 24); 19 attention + FFN pairs
    ["uir_r1_a5_k5_s2_e6_c1280"] + _S3_ATTN * 19,
]
ARCH_300M = "mobilenetv5_300m_enc"


# ----------------------------------------------------------------------------------------------------
# Block specs: strings -> BlockSpec, and the builder's bookkeeping (strides, dilation, feature taps)
# ----------------------------------------------------------------------------------------------------

def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's channel rounding: nearest multiple of 8 (at least 8), never more than 10% below ``v``.
    Every block's output channels and expanded width go through it (c20 -> 24, 56 * 2.0 -> 112)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


@dataclass
class BlockSpec:
    """One block, fully resolved (channels rounded, stride/dilation as the builder sets them)."""
    kind: str                 # "er" | "uir" | "mqa"
    in_chs: int
    out_chs: int
    stride: int
    dilation: int
    has_skip: bool
    mid_chs: int = 0          # er/uir: expanded width
    exp_kernel: int = 0       # er: kernel of the expanding full conv
    pw_kernel: int = 1        # er: kernel of the projecting conv (1 unless "p" is given)
    dw_start: int = 0         # uir: depthwise kernel before the expansion (0 = none)
    dw_mid: int = 0           # uir: depthwise kernel between expansion and projection
    dw_end: int = 0           # uir: depthwise kernel after the projection
    num_heads: int = 0        # mqa
    key_dim: int = 0          # mqa (= value_dim)
    kv_stride: int = 1        # mqa: stride of the key/value down-sampling conv (1 = no down-sampling)
    dw_kernel: int = 3        # mqa: kernel of that conv
    source: str = ""          # the block string it came from


@dataclass
class EncoderSpec:
    stem_chs: int
    stages: list                       # list of lists of BlockSpec
    msfa_taps: list                    # feature indices fed to the MSFA (0 = stem, s + 1 = stage s)
    msfa_in_chs: int
    msfa_mid_chs: int
    msfa_out_chs: int = MSFA_OUT_CHS
    msfa_resolution: tuple = (16, 16)
    feature_chs: list = field(default_factory=list)


_NUMERIC_KEYS = {"r", "k", "s", "e", "c", "a", "p", "h", "d", "v", "fc"}


def decode_block(block: str) -> tuple[dict, int]:
    """``"uir_r1_a3_k5_s2_e6_c256"`` -> ({kind, options...}, repeats), following timm's
    ``_decode_block_str``: '_'-separated, the first field is the kind, each other field is letters followed
    by a number; ``noskip`` removes the residual. Unsupported fields raise ConfigError."""
    if not isinstance(block, str) or not block:
        raise ConfigError(f"vision_config.model_args.arch_def: block spec must be a non-empty string, got {block!r}")
    kind, *fields = block.split("_")
    if kind not in ("er", "uir", "mqa"):
        raise ConfigError(f"vision_config.model_args.arch_def: block '{block}': kind '{kind}' is not one of "
                          "er, uir, mqa (the block kinds MobileNetV5 uses)")
    opts, noskip = {}, False
    for f in fields:
        if f == "noskip":
            noskip = True
            continue
        if f == "skip":
            continue  # timm parses it but no block kind used here reads it
        m = re.fullmatch(r"([a-z]+)(\d+)", f)
        if not m or m.group(1) not in _NUMERIC_KEYS:
            raise ConfigError(f"vision_config.model_args.arch_def: block '{block}': field '{f}' is not supported "
                              f"(expected one of {sorted(_NUMERIC_KEYS)} followed by an integer, or 'noskip')")
        opts[m.group(1)] = int(m.group(2))
    needed = {"er": "rksec", "uir": "rksec", "mqa": "rkshdc"}[kind]
    missing = [k for k in needed if k not in opts]
    if missing:
        raise ConfigError(f"vision_config.model_args.arch_def: block '{block}' lacks field(s) {missing}")
    if opts["s"] not in (1, 2):
        raise ConfigError(f"vision_config.model_args.arch_def: block '{block}': stride must be 1 or 2")
    if opts["r"] < 1:
        raise ConfigError(f"vision_config.model_args.arch_def: block '{block}': repeats must be >= 1")
    return {"kind": kind, "noskip": noskip, **opts}, opts["r"]


def arch_from_config(vision_cfg) -> tuple[list, int, tuple]:
    """(arch_def, stem_size, msfa_output_resolution) from a VisionConfig (or a dict of its keys)."""
    get = (lambda k, d=None: vision_cfg.get(k, d)) if isinstance(vision_cfg, Mapping) else \
        (lambda k, d=None: getattr(vision_cfg, k, d))
    arch = get("architecture", ARCH_300M)
    args = dict(get("model_args") or {})
    unknown = sorted(set(args) - {"arch_def", "stem_size", "msfa_output_resolution"})
    if unknown:
        raise ConfigError(f"vision_config.model_args: unsupported key(s) {unknown} (minig3n reads arch_def, "
                          "stem_size, msfa_output_resolution)")
    if "arch_def" in args:
        if arch == ARCH_300M:
            raise ConfigError("vision_config.model_args.arch_def is only for custom encoders; "
                              f"'{ARCH_300M}' has a fixed block table")
        arch_def = args["arch_def"]
    elif arch == ARCH_300M:
        arch_def = MOBILENETV5_300M_ARCH_DEF
    else:
        raise ConfigError(f"vision_config.architecture '{arch}' is not {ARCH_300M}, so model_args.arch_def must "
                          "list the block specs")
    if not isinstance(arch_def, (list, tuple)) or not arch_def or \
            not all(isinstance(s, (list, tuple)) and s for s in arch_def):
        raise ConfigError("vision_config.model_args.arch_def must be a non-empty list of non-empty lists of "
                          "block strings")
    res = args.get("msfa_output_resolution", 16)
    res = tuple(res) if isinstance(res, (list, tuple)) else (res, res)
    if len(res) != 2 or not all(isinstance(r, int) and r >= 1 for r in res):
        raise ConfigError(f"vision_config.model_args.msfa_output_resolution must be a positive int, got {res!r}")
    stem = args.get("stem_size", 64)
    if not isinstance(stem, int) or stem < 1:
        raise ConfigError(f"vision_config.model_args.stem_size must be a positive int, got {stem!r}")
    return arch_def, stem, res


def encoder_spec(vision_cfg) -> EncoderSpec:
    """Resolve a vision config into blocks, exactly as timm's ``EfficientNetBuilder`` does:

    * channels: every ``c`` and the stem size are rounded by ``make_divisible`` (multiplier 1.0);
      expanded widths are ``make_divisible(in * e)``;
    * strides: only a stage's first block keeps its ``s``; once the running stride would exceed 32 the
      stride becomes dilation for the following blocks (never reached by the 300M encoder: 2*2*2*2*2 = 32);
    * feature taps: the stem output (if the first block is strided) and the output of every stage that
      is followed by a strided stage (or is the last). The MSFA takes the last two taps, *indexed by
      stage* (tap i = output of stage i-1, the stem being 0), as ``MobileNetV5Encoder`` does.
    """
    arch_def, stem_size, res = arch_from_config(vision_cfg)
    decoded = []
    for stage in arch_def:
        blocks = []
        for s in stage:
            opts, rep = decode_block(s)
            blocks += [dict(opts, source=s) for _ in range(rep)]
        decoded.append(blocks)

    stem_chs = make_divisible(stem_size)
    in_chs, cur_stride, cur_dil = stem_chs, 2, 1
    features = []                                   # (feature index in stage numbering, channels)
    if decoded[0][0]["s"] > 1:
        features.append((0, stem_chs))
    stages = []
    for si, blocks in enumerate(decoded):
        specs = []
        for bi, o in enumerate(blocks):
            stride = o["s"] if bi == 0 else 1
            next_dil = cur_dil
            if stride > 1:
                if cur_stride * stride > OUTPUT_STRIDE:
                    next_dil, stride = cur_dil * stride, 1
                else:
                    cur_stride *= stride
            spec = _block_spec(o, in_chs, stride, cur_dil)
            cur_dil = next_dil
            specs.append(spec)
            in_chs = spec.out_chs
            if bi == len(blocks) - 1 and (si + 1 == len(decoded) or decoded[si + 1][0]["s"] > 1):
                if spec.kind == "mqa":
                    raise ConfigError(f"vision_config.model_args.arch_def: stage {si} ends with an mqa block "
                                      f"('{o['source']}'), where the encoder taps its features; timm cannot "
                                      "build that (MobileAttention has no feature_info): end it with er/uir")
                features.append((si + 1, spec.out_chs))
        stages.append(specs)
    if len(features) < 2:
        raise ConfigError("vision_config.model_args.arch_def: the MSFA needs two feature levels (stages that "
                          f"end before a strided stage, or the last one); this spec has {len(features)}")
    # timm: msfa_indices (-2, -1) index feature_info, but the forward pass compares them with the stage
    # counter (stem 0, stage s -> s + 1). Both agree when every stage starts strided (the 300M encoder).
    taps = [len(features) - 2, len(features) - 1]
    msfa_in = features[-2][1] + features[-1][1]
    tapped = sum(stem_chs if t == 0 else stages[t - 1][-1].out_chs for t in taps if t <= len(stages))
    if any(t > len(stages) for t in taps) or tapped != msfa_in:
        raise ConfigError("vision_config.model_args.arch_def: the MSFA inputs do not line up (timm takes stage "
                          f"outputs {taps} but sizes the MSFA for {msfa_in} channels); start every stage with "
                          "a stride-2 block")
    return EncoderSpec(stem_chs, stages, taps, msfa_in, make_divisible(msfa_in * 2.0), MSFA_OUT_CHS, res,
                       [c for _, c in features])


def _block_spec(o: dict, in_chs: int, stride: int, dilation: int) -> BlockSpec:
    out = make_divisible(o["c"])
    skip = in_chs == out and stride == 1 and not o["noskip"]
    if o["kind"] == "er":
        base = make_divisible(o["fc"]) if o.get("fc") else in_chs
        return BlockSpec("er", in_chs, out, stride, dilation, skip, mid_chs=make_divisible(base * o["e"]),
                         exp_kernel=o["k"], pw_kernel=o.get("p", 1), source=o["source"])
    if o["kind"] == "uir":
        a, k, p = o.get("a", 0), o["k"], o.get("p", 0)
        if stride > 1 and not (a or k or p):
            raise ConfigError(f"vision_config.model_args.arch_def: block '{o['source']}' has stride 2 but no "
                              "depthwise conv to carry it (a, k and p are all 0)")
        return BlockSpec("uir", in_chs, out, stride, dilation, skip, mid_chs=make_divisible(in_chs * o["e"]),
                         dw_start=a, dw_mid=k, dw_end=p, source=o["source"])
    # mqa: the block's stride only decides the residual (timm passes no query stride)
    return BlockSpec("mqa", in_chs, out, stride, dilation, skip, num_heads=o["h"], key_dim=o["d"],
                     kv_stride=o.get("v", 1), dw_kernel=o["k"], source=o["source"])


def vision_weight_shapes(vision_cfg, prefix: str = PREFIX + ".") -> dict[str, tuple]:
    """Every tensor the encoder reads (timm state-dict names under ``prefix``), with its shape."""
    spec = encoder_spec(vision_cfg)
    s = {prefix + "conv_stem.conv.weight": (spec.stem_chs, 3, 3, 3), prefix + "conv_stem.conv.bias": (spec.stem_chs,),
         prefix + "conv_stem.bn.weight": (spec.stem_chs,)}

    def cna(name, cin, cout, k, depthwise=False):
        s[f"{name}.conv.weight"] = (cout, 1 if depthwise else cin, k, k)
        s[f"{name}.bn.weight"] = (cout,)

    for si, blocks in enumerate(spec.stages):
        for bi, b in enumerate(blocks):
            n = f"{prefix}blocks.{si}.{bi}"
            if b.kind == "er":
                s.update({f"{n}.conv_exp.weight": (b.mid_chs, b.in_chs, b.exp_kernel, b.exp_kernel),
                          f"{n}.bn1.weight": (b.mid_chs,), f"{n}.bn2.weight": (b.out_chs,),
                          f"{n}.conv_pwl.weight": (b.out_chs, b.mid_chs, b.pw_kernel, b.pw_kernel)})
            elif b.kind == "uir":
                if b.dw_start:
                    cna(f"{n}.dw_start", b.in_chs, b.in_chs, b.dw_start, True)
                cna(f"{n}.pw_exp", b.in_chs, b.mid_chs, 1)
                if b.dw_mid:
                    cna(f"{n}.dw_mid", b.mid_chs, b.mid_chs, b.dw_mid, True)
                cna(f"{n}.pw_proj", b.mid_chs, b.out_chs, 1)
                if b.dw_end:
                    cna(f"{n}.dw_end", b.out_chs, b.out_chs, b.dw_end, True)
                s[f"{n}.layer_scale.gamma"] = (b.out_chs,)
            else:
                C, hd, d = b.in_chs, b.num_heads * b.key_dim, b.key_dim
                s[f"{n}.norm.weight"] = (C,)
                s[f"{n}.attn.query.proj.weight"] = (hd, C, 1, 1)
                for kv in ("key", "value"):
                    if b.kv_stride > 1:
                        s[f"{n}.attn.{kv}.down_conv.weight"] = (C, 1, b.dw_kernel, b.dw_kernel)
                        s[f"{n}.attn.{kv}.norm.weight"] = (C,)
                    s[f"{n}.attn.{kv}.proj.weight"] = (d, C, 1, 1)
                s[f"{n}.attn.output.proj.weight"] = (b.out_chs, hd, 1, 1)
                s[f"{n}.layer_scale.gamma"] = (b.out_chs,)
    cna(f"{prefix}msfa.ffn.pw_exp", spec.msfa_in_chs, spec.msfa_mid_chs, 1)
    cna(f"{prefix}msfa.ffn.pw_proj", spec.msfa_mid_chs, spec.msfa_out_chs, 1)
    s[f"{prefix}msfa.norm.weight"] = (spec.msfa_out_chs,)
    return s


# ----------------------------------------------------------------------------------------------------
# Primitives (NCHW)
# ----------------------------------------------------------------------------------------------------

def same_padding(n: int, k: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one axis of length n (timm ``get_same_padding``)."""
    total = max((-(-n // stride) - 1) * stride + (k - 1) * dilation + 1 - n, 0)
    return total // 2, total - total // 2


def _pad_same(x, k, stride, dilation):
    """Zero-pad the last two axes TF-"SAME" style.   [B, C, Y, X] -> [B, C, Y', X']"""
    (t, b), (l, r) = same_padding(x.shape[-2], k, stride, dilation), same_padding(x.shape[-1], k, stride, dilation)
    if t or b or l or r:
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))                            # [B, C, Y', X']
    return x


def _windows(xp, k, stride, dilation, Yo, Xo):
    """Strided view of every kxk window of a padded map (no copy).   [B, C, Y', X'] -> [B, C, k, k, Yo, Xo]"""
    sb, sc, sy, sx = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (xp.shape[0], xp.shape[1], k, k, Yo, Xo),
        (sb, sc, sy * dilation, sx * dilation, sy * stride, sx * stride), writeable=False)


def conv2d(x, w, stride=1, dilation=1, bias=None):
    """Dense kxk conv, TF-"SAME" padding, by im2col + one matmul.   [B, Ci, Y, X] -> [B, Co, Yo, Xo]

    ``w`` [Co, Ci, k, k] (PyTorch layout). Yo = ceil(Y / stride).
    """
    B, Ci, Y, X = x.shape
    Co, k = w.shape[0], w.shape[-1]
    Yo, Xo = -(-Y // stride), -(-X // stride)
    w = w.astype(x.dtype, copy=False)
    if k == 1 and stride == 1:
        return pointwise_conv(x, w)
    cols = _windows(_pad_same(x, k, stride, dilation), k, stride, dilation, Yo, Xo)  # [B, Ci, k, k, Yo, Xo]
    cols = cols.reshape(B, Ci * k * k, Yo * Xo)                                 # [B, Ci*k*k, Yo*Xo] (copy)
    y = np.matmul(w.reshape(Co, Ci * k * k), cols).reshape(B, Co, Yo, Xo)      # [B, Co, Yo, Xo]
    return y if bias is None else y + bias.astype(x.dtype, copy=False)[:, None, None]


def depthwise_conv2d(x, w, stride=1, dilation=1):
    """Depthwise kxk conv (one filter per channel), TF-"SAME" padding.   [B, C, Y, X] -> [B, C, Yo, Xo]

    ``w`` [C, 1, k, k]. Computed as a sum of k*k shifted, strided views, each times one tap per channel:
    ``y[c] = sum_ij w[c, i, j] * xpad[c, i*d + s*y, j*d + s*x]``.
    """
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.depthwise_conv2d(x, w, stride, dilation)
    B, C, Y, X = x.shape
    k = w.shape[-1]
    Yo, Xo = -(-Y // stride), -(-X // stride)
    xp = _pad_same(x, k, stride, dilation)                                      # [B, C, Y', X']
    taps = w.astype(x.dtype, copy=False).reshape(C, k, k)                       # [C, k, k]
    y = np.zeros((B, C, Yo, Xo), dtype=x.dtype)                                 # [B, C, Yo, Xo]
    tmp = np.empty_like(y)                                                      # [B, C, Yo, Xo] scratch
    for i in range(k):
        for j in range(k):
            view = xp[:, :, i * dilation:i * dilation + (Yo - 1) * stride + 1:stride,
                      j * dilation:j * dilation + (Xo - 1) * stride + 1:stride]  # [B, C, Yo, Xo]
            np.multiply(view, taps[:, i, j, None, None], out=tmp)              # [B, C, Yo, Xo]
            y += tmp
    return y


def pointwise_conv(x, w):
    """1x1 conv = a matmul over channels.   [B, Ci, Y, X] -> [B, Co, Y, X];  w [Co, Ci, 1, 1]"""
    B, Ci, Y, X = x.shape
    w2 = w.reshape(w.shape[0], Ci).astype(x.dtype, copy=False)                 # [Co, Ci]
    return np.matmul(w2, x.reshape(B, Ci, Y * X)).reshape(B, -1, Y, X)         # [B, Co, Y, X]


def rms_norm2d(x, weight, eps=EPS):
    """timm ``RmsNorm2d``: per pixel over channels, ``x * rsqrt(mean_c(x^2) + eps) * w[c]``.
    [B, C, Y, X] -> [B, C, Y, X]. No float32 island: it computes in the input's dtype."""
    if accel.use_numba(x):  # the same sums, compiled (optional numba extra): accel.py
        return accel.rms_norm2d(x, weight, eps)
    t = x.dtype.type
    ms = np.add.reduce(np.square(x), axis=1, keepdims=True)                     # [B, 1, Y, X]
    ms /= t(x.shape[1])                                                         # mean over channels
    y = x * (t(1.0) / np.sqrt(ms + t(eps)))                                     # [B, C, Y, X]
    y *= weight.astype(x.dtype, copy=False)[:, None, None]                      # [B, C, Y, X]
    return y


def gelu(x):
    """tanh-GELU as torch computes it (``F.gelu(approximate='tanh')``):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.   [...] -> [...]

    The constants sqrt(2/pi) and 0.044715 are taken in the working dtype: torch's kernel does that
    (double constants for float64 tensors), so float32 constants would cost ~7e-9 absolute in float64.
    Computed in place on one temporary (the activations are large).
    """
    t = x.dtype.type
    h = x * x                                                                   # [...]
    h *= x                                                                      # x^3
    h *= t(0.044715)
    h += x
    h *= t(np.sqrt(2.0 / np.pi))
    np.tanh(h, out=h)
    h += t(1.0)
    h *= x
    h *= t(0.5)                                                                 # exact: a power of two
    return h


def conv_norm_act(x, p, kernel=1, stride=1, dilation=1, depthwise=False, act=True, bias=None):
    """timm ``ConvNormAct``: conv (``p['conv.weight']``) -> RmsNorm2d (``p['bn.weight']``) -> GELU or not.
    [B, Ci, Y, X] -> [B, Co, Yo, Xo]"""
    w = p["conv.weight"]
    if depthwise:
        x = depthwise_conv2d(x, w, stride, dilation)                            # [B, C, Yo, Xo]
    else:
        x = conv2d(x, w, stride, dilation, bias)                                # [B, Co, Yo, Xo]
    x = rms_norm2d(x, p["bn.weight"])                                           # [B, Co, Yo, Xo]
    return gelu(x) if act else x


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------

def stem(x, p):
    """conv 3x3 stride 2 (with bias: zeros in the checkpoints; absent = zeros), RmsNorm2d, GELU.
    [B, 3, Y, X] -> [B, C, Y/2, X/2]"""
    bias = p["conv.bias"] if "conv.bias" in p else None
    return conv_norm_act(x, p, 3, stride=2, bias=bias)


def edge_residual(x, p, b: BlockSpec):
    """ER ("fused MBConv"): full kxk conv expanding to mid channels (stride s) -> norm -> GELU, then a
    (1x1) conv projecting to out channels -> norm; residual iff in == out and stride 1. No layer scale.
    [B, Ci, Y, X] -> [B, Co, Y/s, X/s]"""
    h = conv2d(x, p["conv_exp.weight"], b.stride, b.dilation)                   # [B, mid, Yo, Xo]
    h = gelu(rms_norm2d(h, p["bn1.weight"]))                                    # [B, mid, Yo, Xo]
    h = conv2d(h, p["conv_pwl.weight"])                                         # [B, Co, Yo, Xo]
    h = rms_norm2d(h, p["bn2.weight"])                                          # [B, Co, Yo, Xo]
    return h + x if b.has_skip else h


def universal_inverted_residual(x, p, b: BlockSpec):
    """UIR: [depthwise a (start), norm, no act] -> 1x1 expand, norm, GELU -> [depthwise k (mid), norm,
    GELU] -> 1x1 project, norm -> [depthwise p (end), norm, no act] -> layer scale -> + x (iff in == out
    and stride 1). The stride sits on the mid conv if there is one, else on the start, else on the end.
    [B, Ci, Y, X] -> [B, Co, Y/s, X/s]"""
    h = x
    if b.dw_start:
        s = 1 if b.dw_mid else b.stride
        h = conv_norm_act(h, sub_params(p, "dw_start"), b.dw_start, s, b.dilation, depthwise=True, act=False)  # [B, Ci, .]
    h = conv_norm_act(h, sub_params(p, "pw_exp"))                                     # [B, mid, Y', X']
    if b.dw_mid:
        h = conv_norm_act(h, sub_params(p, "dw_mid"), b.dw_mid, b.stride, b.dilation, depthwise=True)  # [B, mid, Yo, Xo]
    h = conv_norm_act(h, sub_params(p, "pw_proj"), act=False)                         # [B, Co, Yo, Xo]
    if b.dw_end:
        s = b.stride if not (b.dw_start or b.dw_mid) else 1
        h = conv_norm_act(h, sub_params(p, "dw_end"), b.dw_end, s, b.dilation, depthwise=True, act=False)  # [B, Co, Yo, Xo]
    h = h * p["layer_scale.gamma"].astype(h.dtype, copy=False)[:, None, None]  # [B, Co, Yo, Xo]
    return h + x if b.has_skip else h


def mobile_mqa(x, p, b: BlockSpec):
    """Mobile multi-query attention: xn = RmsNorm2d(x) (no act); h query heads of width d from a 1x1 conv;
    ONE key head and ONE value head (width d), each from its own path: [depthwise k3 stride v -> norm] ->
    1x1 conv. Every query head attends over the M = (Y/v)(X/v) key pixels with softmax(q k^T / sqrt(d)).
    Heads are laid out as channels head*d + j, projected back by a 1x1 conv, layer-scaled, added to x.
    [B, C, Y, X] -> [B, C, Y, X]"""
    B, C, Y, X = x.shape
    h, d = b.num_heads, b.key_dim
    xn = rms_norm2d(x, p["norm.weight"])                                        # [B, C, Y, X]
    q = pointwise_conv(xn, p["attn.query.proj.weight"])                         # [B, h*d, Y, X]
    q = q.reshape(B, h, d, Y * X).transpose(0, 1, 3, 2)                         # [B, h, Y*X, d]
    kv = []
    for name in ("key", "value"):
        t = xn
        if b.kv_stride > 1:
            t = depthwise_conv2d(t, p[f"attn.{name}.down_conv.weight"], b.kv_stride, b.dilation)  # [B, C, Ym, Xm]
            t = rms_norm2d(t, p[f"attn.{name}.norm.weight"])                    # [B, C, Ym, Xm]
        t = pointwise_conv(t, p[f"attn.{name}.proj.weight"])                    # [B, d, Ym, Xm]
        kv.append(t.reshape(B, 1, d, -1).transpose(0, 1, 3, 2))                 # [B, 1, M, d]
    k, v = kv
    # One key/value head serves every query head, so all h*Y*X queries go through one matmul.
    q2 = q.reshape(B, h * Y * X, d)                                             # [B, h*Y*X, d]
    logits = np.matmul(q2, k[:, 0].transpose(0, 2, 1))                          # [B, h*Y*X, M]
    logits *= x.dtype.type(d ** -0.5)
    logits -= logits.max(axis=-1, keepdims=True)                                # softmax, stable form
    np.exp(logits, out=logits)
    o = np.matmul(logits, v[:, 0]) / logits.sum(axis=-1, keepdims=True)        # [B, h*Y*X, d]
    o = o.reshape(B, h, Y * X, d)                                               # [B, h, Y*X, d]
    o = o.transpose(0, 2, 1, 3).reshape(B, Y, X, h * d).transpose(0, 3, 1, 2)  # [B, h*d, Y, X]
    o = pointwise_conv(np.ascontiguousarray(o), p["attn.output.proj.weight"])   # [B, Co, Y, X]
    o = o * p["layer_scale.gamma"].astype(o.dtype, copy=False)[:, None, None]  # [B, Co, Y, X]
    return o + x if b.has_skip else o


BLOCKS = {"er": edge_residual, "uir": universal_inverted_residual, "mqa": mobile_mqa}


def resize_nearest(x, out_hw):
    """``F.interpolate(mode='nearest')``: source index floor(dst * in/out), the ratio in float32 as torch
    computes it.   [B, C, Y, X] -> [B, C, Yo, Xo]"""
    idx = []
    for n_in, n_out in zip(x.shape[-2:], out_hw):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        idx.append(np.minimum(src, n_in - 1))
    return x[:, :, idx[0][:, None], idx[1][None, :]]                            # [B, C, Yo, Xo]


def resize_bilinear(x, out_hw):
    """``F.interpolate(mode='bilinear', align_corners=False)`` without antialiasing: source coordinate
    ``(dst + 0.5) * in/out - 0.5`` clamped at 0, linear between its two neighbours.   [B, C, Y, X] -> [B, C, Yo, Xo]"""
    t = x.dtype.type
    for axis, n_out in ((2, out_hw[0]), (3, out_hw[1])):
        n_in = x.shape[axis]
        scale = t(n_in) / t(n_out)
        src = np.maximum(scale * (np.arange(n_out).astype(x.dtype) + t(0.5)) - t(0.5), t(0))
        i0 = src.astype(np.int64)
        i1 = i0 + (i0 < n_in - 1)
        lam = src - i0.astype(x.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        lam = lam.reshape(shape)
        x = np.take(x, i0, axis=axis) * (t(1) - lam) + np.take(x, i1, axis=axis) * lam
    return x


def msfa(features, p, spec: EncoderSpec):
    """Multi-scale fusion adapter: resize the coarser maps up to the first (finest) map's size (nearest),
    concatenate channels, FFN (1x1 expand x2 -> norm -> GELU -> 1x1 project -> norm; no residual, no layer
    scale), then to ``msfa_resolution``: average pooling when the size divides evenly, else bilinear;
    finally RmsNorm2d.   [[B, C_i, Y_i, X_i], ...] -> [B, 2048, r, r]"""
    hi = features[0].shape[-2:]
    parts = [resize_nearest(f, hi) if (f.shape[-2] < hi[0] or f.shape[-1] < hi[1]) else f for f in features]
    x = np.concatenate(parts, axis=1)                                           # [B, C0+C1, Y, X]
    x = conv_norm_act(x, sub_params(p, "ffn.pw_exp"))                                 # [B, mid, Y, X]
    x = conv_norm_act(x, sub_params(p, "ffn.pw_proj"), act=False)                     # [B, 2048, Y, X]
    ro, co = spec.msfa_resolution
    if (hi[0], hi[1]) != (ro, co):
        if hi[0] % ro or hi[1] % co:
            x = resize_bilinear(x, (ro, co))                                    # [B, 2048, r, r]
        else:
            B, C = x.shape[:2]
            sy, sx = hi[0] // ro, hi[1] // co
            x = x.reshape(B, C, ro, sy, co, sx).mean(axis=(3, 5))               # [B, 2048, r, r]
    return rms_norm2d(x, p["norm.weight"])                                      # [B, 2048, r, r]


# ----------------------------------------------------------------------------------------------------
# The encoder and the way into the language model
# ----------------------------------------------------------------------------------------------------

def vision_encoder(pixel_values, p, vision_cfg, trace=None, prefix: str = PREFIX):
    """Pixels -> feature map.   [B, 3, Y, X] -> [B, 2048, r, r] (r = msfa_output_resolution, 16)

    ``p``: the tensors under ``model.vision_tower.timm_model`` (a ``checkpoint.Params`` or a dict keyed
    ``conv_stem.conv.weight``, ``blocks.2.1.pw_exp.conv.weight``, ``msfa.norm.weight``, ...).
    ``trace``: a dict to receive every block's output under the reference's module path
    (``<prefix>.conv_stem``, ``<prefix>.blocks.<s>.<b>``, ``<prefix>.msfa``).
    Works in the dtype of ``pixel_values`` (float32 or float64; anything else is taken as float32).
    """
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"pixel_values must have shape [batch, 3, height, width], got {list(x.shape)}")
    if min(x.shape) == 0:
        raise InputError(f"pixel_values is empty: shape {list(x.shape)}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    spec = encoder_spec(vision_cfg)
    taps = []
    x = stem(x, sub_params(p, "conv_stem"))                                           # [B, C, Y/2, X/2]
    _record(trace, f"{prefix}.conv_stem", x)
    if 0 in spec.msfa_taps:
        taps.append(x)
    for si, blocks in enumerate(spec.stages):
        for bi, b in enumerate(blocks):
            x = BLOCKS[b.kind](x, sub_params(p, f"blocks.{si}.{bi}"), b)              # [B, C_b, Y_b, X_b]
            _record(trace, f"{prefix}.blocks.{si}.{bi}", x)
        if si + 1 in spec.msfa_taps:
            taps.append(x)
    out = msfa(taps, sub_params(p, "msfa"), spec)                                     # [B, 2048, r, r]
    _record(trace, f"{prefix}.msfa", out)
    return out


def image_soft_tokens(features, p_embed_vision, vision_cfg=None):
    """Encoder output -> soft tokens in the text model's space (``Gemma3nModel.get_image_features``).
    [B, Cv, r, r] -> [B, r*r, Dt]

    Flatten the map row-major to r*r tokens of width Cv (token index ``r*row + col``), multiply by
    ``sqrt(Cv)`` (vision hidden_size 2048: 45.254833; the reference multiplies by a Python float, so the
    factor is that double rounded to the working dtype), then the embedder's soft path
    (``RMSNorm_noW(RMSNorm_soft(z) W^T)``). The scale only acts through the norm's eps, but it is there.
    (The reference multiplies in place, so the ``last_hidden_state`` that ``get_image_features`` returns is
    the *scaled* map; ``vision_encoder`` returns the unscaled one, as the vision tower does.)
    ``p_embed_vision``: tensors under ``model.embed_vision``; ``vision_cfg`` supplies hidden_size and
    rms_norm_eps (defaults: the map's channel count, 1e-6).
    """
    from .embedder import embed_soft

    f = np.asarray(features)
    if f.ndim != 4:
        raise InputError(f"vision features must have shape [batch, channels, rows, cols], got {list(f.shape)}")
    B, C = f.shape[:2]
    hidden = getattr(vision_cfg, "hidden_size", C) if vision_cfg is not None else C
    eps = getattr(vision_cfg, "rms_norm_eps", 1e-6) if vision_cfg is not None else 1e-6
    if C != hidden:
        raise InputError(f"vision features have {C} channels, vision_config.hidden_size is {hidden}")
    z = f.reshape(B, C, -1).transpose(0, 2, 1)                                  # [B, r*r, Cv]
    z = z * f.dtype.type(hidden ** 0.5)                                         # [B, r*r, Cv]
    return embed_soft(z, p_embed_vision, eps)                                   # [B, r*r, Dt]


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------

def _record(trace, name, x):
    if trace is not None:
        trace[name] = x
