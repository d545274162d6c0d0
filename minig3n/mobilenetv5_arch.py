"""MobileNetV5 architecture: block strings, their decoding, and the encoder spec and weight shapes they imply.

Block strings (decoded by ``decode_block``; the reference decodes them with timm's own decoder)::

    er_r1_k3_s2_e4_c128        edge residual: conv k3 stride 2 expanding x4, 1x1 project to 128 channels
    uir_r1_a5_k5_p0_s2_e6_c640 universal inverted residual: depthwise a5 (start), 1x1 expand x6,
                               depthwise k5 (mid, stride 2), 1x1 project to 640, depthwise p (end; 0 = none)
    mqa_r1_k3_h12_v2_s1_d64_c640   multi-query attention: 12 query heads of width 64, one key/value head,
                               keys/values from a depthwise k3 stride-v (2) conv, output 640 channels
    r = repeats, s = stride (only the first block of a stage keeps it), "noskip" drops the residual.

``encoder_spec(vision_cfg)`` turns the config's arch (the published 300M table, or ``model_args.arch_def``)
into ``BlockSpec`` s with the builder's stride/dilation bookkeeping and feature taps; ``vision_weight_shapes``
lists every tensor the encoder reads.

Source: timm 1.0.31 ``timm/models/mobilenetv5.py`` (the 300M arch table), ``_efficientnet_builder.py``
(string decoding, stride/dilation bookkeeping, feature taps).
Left out: block kinds MobileNetV5 does not use (``ir``, ``ds``, ``cn``, ``mha``, squeeze-excite).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

PREFIX = "model.vision_tower.timm_model"
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
