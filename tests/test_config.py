"""Config reading: both HF layouts, defaults as in transformers 5.24, and rejections that name the key."""
import copy

import pytest

from minig3n.config import FULL, SLIDING, Gemma3nConfig, TextConfig, e2b_config, e4b_config
from minig3n.errors import ConfigError

pytestmark = pytest.mark.foundation


def test_text_defaults_follow_reference_rules():
    """With L = 12 and nothing else given: every 5th layer is full ((i+1) % 5 == 0 -> layers 4 and 9),
    the first 10 layers get sparsity 0.95 (because L > 10), an int intermediate size is repeated."""
    c = TextConfig.from_dict({"num_hidden_layers": 12, "intermediate_size": 64, "num_kv_shared_layers": 2})
    assert [i for i, t in enumerate(c.layer_types) if t == FULL] == [4, 9]
    assert c.activation_sparsity_pattern == [0.95] * 10 + [0.0, 0.0]
    assert c.intermediate_size == [64] * 12
    c = TextConfig.from_dict({"num_hidden_layers": 5, "num_kv_shared_layers": 0})
    assert c.activation_sparsity_pattern == [0.0] * 5  # L <= 10: no sparse layers


def test_rope_both_spellings():
    new = TextConfig.from_dict({"rope_parameters": {FULL: {"rope_type": "default", "rope_theta": 5.0},
                                                     SLIDING: {"rope_type": "default", "rope_theta": 7.0}}})
    old = TextConfig.from_dict({"rope_theta": 5.0, "rope_local_base_freq": 7.0})
    assert (new.rope_theta, new.rope_local_base_freq) == (old.rope_theta, old.rope_local_base_freq) == (5.0, 7.0)
    with pytest.raises(ConfigError, match="rope_parameters.full_attention.rope_type"):
        TextConfig.from_dict({"rope_parameters": {FULL: {"rope_type": "yarn"}}})


def test_unknown_keys_ignored():
    c = TextConfig.from_dict({"query_pre_attn_scalar": 256, "altup_lr_multiplier": 1.0, "torch_dtype": "bfloat16"})
    assert c.hidden_size == 2048


@pytest.mark.parametrize("patch, key", [
    ({"intermediate_size": [8, 8]}, "intermediate_size"),
    ({"activation_sparsity_pattern": [0.5]}, "activation_sparsity_pattern"),
    ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"num_attention_heads": 3}, "num_attention_heads"),
    ({"num_key_value_heads": 3, "num_attention_heads": 4}, "num_key_value_heads"),
    ({"num_kv_shared_layers": 4}, "num_kv_shared_layers"),
    ({"altup_active_idx": 4}, "altup_active_idx"),
    ({"hidden_activation": "relu"}, "hidden_activation"),
])
def test_rejections_name_the_key(patch, key):
    base = {"num_hidden_layers": 5, "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_kv_shared_layers": 0}
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TextConfig.from_dict({**base, **patch})


def test_kv_sharing_needs_a_producer_per_type():
    """Layers 3, 4 share K/V; layer 4 is full but layers 0..2 are all sliding: no full producer."""
    with pytest.raises(ConfigError, match=r"num_kv_shared_layers.*\['full_attention'\]"):
        TextConfig.from_dict({"num_hidden_layers": 5, "num_kv_shared_layers": 2})


def test_presets_match_published_configs():
    e2b, e4b = e2b_config(), e4b_config()
    assert (e2b.text.num_hidden_layers, e4b.text.num_hidden_layers) == (30, 35)
    assert e2b.text.intermediate_size == [8192] * 30 and e4b.text.intermediate_size == [16384] * 35
    assert e2b.text.first_kv_shared_layer == e4b.text.first_kv_shared_layer == 20
    assert e2b.text.activation_sparsity_pattern == [0.95] * 10 + [0.0] * 20
    assert [i for i, t in enumerate(e4b.text.layer_types) if t == FULL] == [4, 9, 14, 19, 24, 29, 34]
    assert (e2b.text.vocab_size, e2b.text.vocab_size_per_layer_input) == (262_400, 262_144)
    assert (e2b.audio.hidden_size, e2b.audio.conf_num_hidden_layers, e2b.vision.architecture) == (
        1536, 12, "mobilenetv5_300m_enc")
    assert (e2b.eoi_token_id, e2b.image_token_id, e2b.eoa_token_id, e2b.audio_token_id) == (
        262_144, 262_145, 262_272, 262_273)


def test_multimodal_roundtrip_and_text_only_layout():
    d = e2b_config().to_dict()
    assert Gemma3nConfig.from_dict(copy.deepcopy(d)) == e2b_config()
    t = Gemma3nConfig.from_dict(d["text_config"])
    assert not t.is_multimodal and t.audio is None and t.text == e2b_config().text
    with pytest.raises(ConfigError, match="'model_type'"):
        Gemma3nConfig.from_dict({"model_type": "gemma3"})
    with pytest.raises(ConfigError, match="'image_token_id'"):
        Gemma3nConfig.from_dict({**d, "image_token_id": 10 ** 7})
