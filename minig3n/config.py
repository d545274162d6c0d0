"""Configuration of Gemma 3n: text decoder, USM audio encoder, MobileNetV5 vision encoder.

The idea: one dataclass per tower, read from a Hugging Face ``config.json`` with the same key names, so a
reader can hold this file next to the checkpoint's config and see every number the model uses.
``Gemma3nConfig.from_dict`` reads both layouts Hugging Face publishes:

* multimodal (``"model_type": "gemma3n"``): nested ``text_config``, ``audio_config``, ``vision_config``,
  as in ``google/gemma-3n-E2B-it``;
* text only (``"model_type": "gemma3n_text"``): the text keys at the top level, as written by
  ``Gemma3nForCausalLM.save_pretrained``.

Unknown keys are ignored (hub configs carry training-only keys such as ``altup_lr_multiplier`` and
``query_pre_attn_scalar``, which transformers 5.24 ignores as well). Values the model cannot run with are
rejected with a ``ConfigError`` that names the key and the rule.

Source: ``transformers/models/gemma3n/configuration_gemma3n.py`` (5.24.0) for every default and rule.
Left out: training-only settings (dropout, initializer range), rope scaling (Gemma 3n uses none), and the
bidirectional-attention variant (not used by Gemma 3n).

Legend of the dimension letters used in shape comments throughout minig3n
--------------------------------------------------------------------------
    B  batch                          T  tokens (query positions) in this forward call
    S  key/value positions            D  hidden size of the tower at hand (text 2048, audio 1536)
    K  AltUp streams (altup_num_inputs, 4)
    L  decoder layers                 P  per-layer input width (hidden_size_per_layer_input, 256)
    N  query heads                    G  key/value heads           E  head dim (256 text, 192 audio)
    I  MLP intermediate size          R  LAuReL rank (laurel_rank, 64)
    V  vocabulary                     U  rows of the per-layer-embedding table (vocab_size_per_layer_input)
    A  audio samples                  F  audio frames (mel frames, or encoder frames after subsampling)
    M  mel bins (128)                 Q  FFT bins (513)
    C  channels (vision, audio convs) Y, X  image height, width     k  kernel size
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import (check_types, int_or_int_list, is_int, is_number, optional_int_or_list, optional_positive,
                            optional_str_list, read_json, require, sparsity, type_name)
from .errors import ConfigError
from .kv_share import kv_sharing_modes

SLIDING = "sliding_attention"
FULL = "full_attention"


def _known(cls, d: dict) -> dict:
    """Keep only the keys that are fields of dataclass ``cls`` (unknown keys are ignored, as documented)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class TextConfig:
    """The language model (``Gemma3nTextConfig``). Defaults are transformers' class defaults, i.e. E4B."""

    vocab_size: int = 262_400                  # V: text ids, then 128 vision ids, then 128 audio ids
    vocab_size_per_layer_input: int = 262_144  # U: rows of the per-layer-embedding table (text ids only)
    hidden_size: int = 2048                    # D
    hidden_size_per_layer_input: int = 256     # P
    intermediate_size: Any = 16_384            # I: one int for all layers, or a list with one per layer
    num_hidden_layers: int = 35                # L
    num_attention_heads: int = 8               # N
    num_key_value_heads: int = 2               # G
    head_dim: int = 256                        # E
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 32_768
    rms_norm_eps: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: Any = 1
    bos_token_id: int = 2
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0            # RoPE base of full-attention layers
    rope_local_base_freq: float = 10_000.0     # RoPE base of sliding-window layers
    sliding_window: int = 512
    layer_types: list | None = None            # default: every 5th layer full, the rest sliding
    final_logit_softcapping: float | None = 30.0
    attention_bias: bool = False
    altup_active_idx: int = 0
    altup_coef_clip: float | None = 120.0
    altup_correct_scale: bool = True
    altup_num_inputs: int = 4                  # K
    num_kv_shared_layers: int = 15
    laurel_rank: int = 64                      # R
    activation_sparsity_pattern: Any = None    # default: 0.95 on the first 10 layers if L > 10

    _TYPES = {  # fields whose type is not the type of their default (see config_checks.check_types)
        "intermediate_size": int_or_int_list, "eos_token_id": optional_int_or_list,
        "layer_types": optional_str_list, "activation_sparsity_pattern": sparsity,
        "final_logit_softcapping": optional_positive, "altup_coef_clip": optional_positive,
        "pad_token_id": lambda v: (v is None or is_int(v), "an integer or null"),
    }

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "TextConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config key '{where.rstrip('.') or 'text_config'}': must be an object, "
                              f"got {type_name(d)}")
        d = dict(d)
        # transformers >= 5 writes rope settings as rope_parameters{full_attention, sliding_attention};
        # older files carry rope_theta / rope_local_base_freq at the top level. Accept both.
        rope = d.pop("rope_parameters", None) or {}
        require(isinstance(rope, dict), where + "rope_parameters", f"must be an object, got {type_name(rope)}")
        for layer_type, key in ((FULL, "rope_theta"), (SLIDING, "rope_local_base_freq")):
            sub = rope.get(layer_type) or {}
            require(isinstance(sub, dict), f"{where}rope_parameters.{layer_type}",
                    f"must be an object, got {type_name(sub)}")
            require(sub.get("rope_type", "default") == "default", f"rope_parameters.{layer_type}.rope_type",
                    "only 'default' RoPE is used by Gemma 3n")
            if "rope_theta" in sub:
                d[key] = sub["rope_theta"]
        check_types(cls, d, where)
        cfg = cls(**_known(cls, d))
        cfg.validate()
        return cfg

    def __post_init__(self):
        L = self.num_hidden_layers
        if isinstance(self.intermediate_size, int):
            self.intermediate_size = [self.intermediate_size] * L
        if self.layer_types is None:
            self.layer_types = [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(L)]
        if self.activation_sparsity_pattern is None:
            n_sparse = 10 if L > 10 else 0
            self.activation_sparsity_pattern = [0.95] * n_sparse + [0.0] * (L - n_sparse)
        elif isinstance(self.activation_sparsity_pattern, (int, float)):
            self.activation_sparsity_pattern = [float(self.activation_sparsity_pattern)] * L
        self.intermediate_size = list(self.intermediate_size)
        self.layer_types = list(self.layer_types)
        self.activation_sparsity_pattern = [float(s) for s in self.activation_sparsity_pattern]

    def validate(self) -> None:
        L = self.num_hidden_layers
        require(L >= 1, "num_hidden_layers", "must be at least 1")
        for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "hidden_size_per_layer_input", "laurel_rank", "altup_num_inputs", "sliding_window",
                    "max_position_embeddings", "vocab_size_per_layer_input"):
            require(int(getattr(self, key)) >= 1, key, f"must be a positive integer, got {getattr(self, key)!r}")
        require(len(self.intermediate_size) == L, "intermediate_size",
                f"a list needs one entry per layer: num_hidden_layers={L}, got {len(self.intermediate_size)}")
        require(all(int(i) >= 1 for i in self.intermediate_size), "intermediate_size", "entries must be >= 1")
        require(len(self.layer_types) == L, "layer_types",
                f"needs one entry per layer: num_hidden_layers={L}, got {len(self.layer_types)}")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        require(not bad, "layer_types", f"entries must be '{SLIDING}' or '{FULL}', got {bad}")
        require(len(self.activation_sparsity_pattern) == L, "activation_sparsity_pattern",
                f"needs one entry per layer: num_hidden_layers={L}, got {len(self.activation_sparsity_pattern)}")
        require(all(0.0 <= s < 1.0 for s in self.activation_sparsity_pattern), "activation_sparsity_pattern",
                "entries must lie in [0, 1)")
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                f"must divide hidden_size ({self.hidden_size} % {self.num_attention_heads} != 0)")
        require(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                f"must divide num_attention_heads ({self.num_attention_heads} % {self.num_key_value_heads} != 0)")
        require(self.head_dim % 2 == 0, "head_dim", "must be even (rotate-half RoPE)")
        require(0 <= self.altup_active_idx < self.altup_num_inputs, "altup_active_idx",
                f"must lie in [0, altup_num_inputs={self.altup_num_inputs})")
        require(self.vocab_size_per_layer_input <= self.vocab_size, "vocab_size_per_layer_input",
                f"must not exceed vocab_size ({self.vocab_size})")
        require(self.hidden_activation in ("gelu_pytorch_tanh", "gelu_tanh"), "hidden_activation",
                f"Gemma 3n uses gelu_pytorch_tanh, got {self.hidden_activation!r}")
        require(not self.attention_bias, "attention_bias", "Gemma 3n attention has no bias")
        for key in ("rms_norm_eps", "rope_theta", "rope_local_base_freq"):
            v = getattr(self, key)
            require(is_number(v) and v > 0, key, f"must be a positive finite number, got {v!r}")
        for key in ("final_logit_softcapping", "altup_coef_clip"):
            v = getattr(self, key)
            require(v is None or (is_number(v) and v > 0), key,
                    f"must be a positive finite number or null (off), got {v!r}")
        require(all(0 <= i < self.vocab_size for i in self.eos_token_ids), "eos_token_id",
                f"must be token ids below vocab_size={self.vocab_size}, got {self.eos_token_id!r}")
        require(0 <= self.bos_token_id < self.vocab_size, "bos_token_id",
                f"must be a token id below vocab_size={self.vocab_size}, got {self.bos_token_id!r}")
        require(0 <= self.num_kv_shared_layers < L, "num_kv_shared_layers",
                f"must lie in [0, num_hidden_layers={L})")
        kv_sharing_modes(self)   # every KV-shared layer's type needs a producer (the rule lives in kv_share)

    # Derived quantities -------------------------------------------------------------------------------
    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "gemma3n_text"
        d["rope_parameters"] = {
            FULL: {"rope_type": "default", "rope_theta": d.pop("rope_theta")},
            SLIDING: {"rope_type": "default", "rope_theta": d.pop("rope_local_base_freq")},
        }
        return d


@dataclass
class AudioConfig:
    """The USM audio encoder (``Gemma3nAudioConfig``); defaults equal the E2B/E4B checkpoints."""

    vocab_size: int = 128                       # rows of embed_audio's hard-token table
    vocab_offset: int = 262_144 + 128           # first audio token id (text vocab + vision vocab)
    input_feat_size: int = 128                  # M
    hidden_size: int = 1536                     # D
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10             # clamps at +-1e10: no-ops at inference
    conf_attention_chunk_size: int = 12
    conf_attention_context_left: int = 13       # includes the query frame itself
    conf_attention_context_right: int = 0
    conf_attention_logit_cap: float = 50.0
    conf_num_attention_heads: int = 8
    conf_num_hidden_layers: int = 12
    conf_conv_kernel_size: int = 5
    conf_reduction_factor: int = 4
    conf_residual_weight: float = 0.5
    sscp_conv_channel_size: list = field(default_factory=lambda: [128, 32])
    sscp_conv_group_norm_eps: float = 1e-3
    sscp_conv_kernel_size: list = field(default_factory=lambda: [[3, 3], [3, 3]])
    sscp_conv_stride_size: list = field(default_factory=lambda: [[2, 2], [2, 2]])

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        require(isinstance(d, dict), "audio_config", f"must be an object, got {type_name(d)}")
        check_types(cls, d, "audio_config.")
        cfg = cls(**_known(cls, d))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if is_int(v) and f.name not in ("conf_attention_context_right",):
                require(1 <= v <= (1 << 24), f"audio_config.{f.name}", f"must be an integer in [1, 2**24], got {v}")
            elif isinstance(v, float):
                require(v > 0, f"audio_config.{f.name}", f"must be a positive finite number, got {v}")
        require(0 <= self.conf_attention_context_right <= 1 << 24, "audio_config.conf_attention_context_right",
                f"must be an integer >= 0, got {self.conf_attention_context_right}")
        require(self.hidden_size % self.conf_num_attention_heads == 0, "audio_config.conf_num_attention_heads",
                f"must divide hidden_size ({self.hidden_size} % {self.conf_num_attention_heads} != 0)")
        require(len(self.sscp_conv_channel_size) == 2, "audio_config.sscp_conv_channel_size", "needs 2 entries")
        require(self.conf_attention_context_left >= 1, "audio_config.conf_attention_context_left", "must be >= 1")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_type": "gemma3n_audio"}


@dataclass
class VisionConfig:
    """The MobileNetV5 vision encoder (``Gemma3nVisionConfig``, a timm wrapper).

    ``architecture`` names a timm model; minig3n knows ``mobilenetv5_300m_enc``. For small encoders
    ``model_args`` carries ``arch_def`` (list of stages, each a list of block strings in timm's notation)
    and ``stem_size``; see ``mobilenetv5_arch.py``.
    """

    architecture: str = "mobilenetv5_300m_enc"
    model_args: dict | None = None
    hidden_size: int = 2048                     # channels of the encoder output = soft-token width
    vocab_size: int = 128
    vocab_offset: int = 262_144
    rms_norm_eps: float = 1e-6
    do_pooling: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        require(isinstance(d, dict), "vision_config", f"must be an object, got {type_name(d)}")
        check_types(cls, d, "vision_config.")
        cfg = cls(**_known(cls, d))
        cfg.validate()
        return cfg

    _TYPES = {"model_args": lambda v: (v is None or isinstance(v, dict), "an object or null")}

    def validate(self) -> None:
        for key in ("hidden_size", "vocab_size", "vocab_offset"):
            v = getattr(self, key)
            require(1 <= v <= (1 << 24), f"vision_config.{key}", f"must be an integer in [1, 2**24], got {v}")
        require(self.rms_norm_eps > 0, "vision_config.rms_norm_eps", f"must be positive, got {self.rms_norm_eps}")
        if self.architecture != "mobilenetv5_300m_enc":
            require(bool(self.model_args) and "arch_def" in self.model_args, "vision_config.model_args",
                    f"architecture {self.architecture!r} is not mobilenetv5_300m_enc, so model_args.arch_def "
                    "must describe the block specs")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_type": "gemma3n_vision"}


@dataclass
class Gemma3nConfig:
    """Top level. ``audio`` and ``vision`` are None for a text-only (``gemma3n_text``) checkpoint."""

    text: TextConfig
    audio: AudioConfig | None = None
    vision: VisionConfig | None = None
    audio_soft_tokens_per_image: int = 188      # soft tokens per audio clip (name kept from the reference)
    vision_soft_tokens_per_image: int = 256     # soft tokens per image
    boi_token_id: int = 255_999                 # <start_of_image>
    eoi_token_id: int = 262_144                 # <end_of_image>
    image_token_id: int = 262_145               # <image_soft_token>
    boa_token_id: int = 256_000                 # <start_of_audio>
    eoa_token_id: int = 262_272                 # <end_of_audio>
    audio_token_id: int = 262_273               # <audio_soft_token>
    model_type: str = "gemma3n"

    @property
    def is_multimodal(self) -> bool:
        return self.model_type == "gemma3n"

    @classmethod
    def from_dict(cls, d: dict) -> "Gemma3nConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {type_name(d)}")
        model_type = d.get("model_type", "gemma3n")
        if model_type == "gemma3n_text":
            return cls(text=TextConfig.from_dict(d), model_type="gemma3n_text")
        require(model_type == "gemma3n", "model_type", f"expected 'gemma3n' or 'gemma3n_text', got {model_type!r}")
        require(isinstance(d.get("text_config"), dict), "text_config", "a gemma3n config needs a text_config")
        top = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}
               and k not in ("text", "audio", "vision", "model_type")}
        check_types(cls, top)
        cfg = cls(text=TextConfig.from_dict(d["text_config"], "text_config."),
                  audio=AudioConfig.from_dict(d.get("audio_config") or {}),
                  vision=VisionConfig.from_dict(d.get("vision_config") or {}), **top)
        V = cfg.text.vocab_size
        for key in ("eoi_token_id", "image_token_id", "eoa_token_id", "audio_token_id", "boi_token_id",
                    "boa_token_id"):
            require(0 <= getattr(cfg, key) < V, key, f"must be a token id below text_config.vocab_size={V}")
        return cfg

    @classmethod
    def from_pretrained(cls, model_dir) -> "Gemma3nConfig":
        """The config of a checkpoint directory (its ``config.json``), as ``transformers`` names it."""
        return cls.from_file(Path(model_dir) / "config.json")

    @classmethod
    def from_file(cls, path) -> "Gemma3nConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no config.json here (a checkpoint directory needs one)")
        d = read_json(path, "config.json")
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: must hold a JSON object (the model config), got {type_name(d)}")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        if not self.is_multimodal:
            return self.text.to_dict()
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("text", "audio", "vision")}
        d["text_config"] = self.text.to_dict()
        d["audio_config"] = self.audio.to_dict()
        d["vision_config"] = self.vision.to_dict()
        return d


# Presets -------------------------------------------------------------------------------------------------
# E4B: the transformers 5.24 class defaults (configuration_gemma3n.py), which the HF weight converter
# (convert_gemma3n_weights.py, _VARIANTS["gemma-3n-e4b"]) uses as they are.
# E2B: the converter's _VARIANTS["gemma-3n-e2b"]: intermediate_size 8192, num_hidden_layers 30,
# activation_sparsity_pattern (0.95,)*10 + (0.0,)*20, num_kv_shared_layers 10; everything else as E4B.
# Both agree with docs/NUMERICS.md §5 and with the official config.json files.
# Audio and vision: class defaults (the same in both checkpoints). Special ids: Gemma3nConfig defaults.

def e4b_config() -> Gemma3nConfig:
    text = TextConfig(intermediate_size=16_384, num_hidden_layers=35, num_kv_shared_layers=15,
                      activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25, eos_token_id=[1, 106])
    text.validate()
    return Gemma3nConfig(text=text, audio=AudioConfig(), vision=VisionConfig())


def e2b_config() -> Gemma3nConfig:
    text = TextConfig(intermediate_size=8192, num_hidden_layers=30, num_kv_shared_layers=10,
                      activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20, eos_token_id=[1, 106])
    text.validate()
    return Gemma3nConfig(text=text, audio=AudioConfig(), vision=VisionConfig())


PRESETS = {"E2B": e2b_config, "E4B": e4b_config}
