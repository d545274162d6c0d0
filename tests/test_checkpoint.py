"""The checkpoint reader: formats, dtypes, sharding, and an error that names the culprit for every bad
input. Expectations are derived by hand (bit patterns, byte counts) in each test."""
import json
import struct

import numpy as np
import pytest

from minig3n.checkpoint import (Checkpoint, SafetensorsFile, as_bf16, bf16_bits_to_float32,
                                float32_to_bf16_bits, load_safetensors, save_safetensors, text_weight_shapes)
from minig3n.config import TextConfig
from minig3n.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.foundation

TINY_TEXT = dict(model_type="gemma3n_text", vocab_size=40, vocab_size_per_layer_input=32, hidden_size=8,
                 hidden_size_per_layer_input=4, intermediate_size=[16, 12, 16], num_hidden_layers=3,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=4, laurel_rank=2, altup_num_inputs=2,
                 num_kv_shared_layers=0, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                 activation_sparsity_pattern=[0.95, 0.0, 0.0], sliding_window=4)


def write_text_checkpoint(d, cfg_dict=TINY_TEXT, bf16=False, shards=1, drop=(), reshape=None):
    """A random text-only checkpoint with every tensor text_weight_shapes lists, in HF layout."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg_dict))
    cfg = TextConfig.from_dict(cfg_dict)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in text_weight_shapes(cfg, "model.").items():
        if name in drop:
            continue
        shape = (reshape or {}).get(name, shape)
        x = rng.standard_normal(shape).astype(np.float32)
        tensors[name] = as_bf16(x) if bf16 else x
    if shards == 1:
        save_safetensors(d / "model.safetensors", tensors)
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            save_safetensors(d / fname, part)
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def test_bf16_widening_is_exact_by_hand():
    """BF16 0x3F80 is 1.0 (sign 0, exponent 127, mantissa 0); 0xC040 is -3.0 (exponent 128, mantissa
    .5 -> -1.5 * 2); 0x0001 is the smallest subnormal 2**-133. Widening appends 16 zero bits."""
    bits = np.array([0x3F80, 0xC040, 0x0001, 0x7F80], dtype=np.uint16)
    got = bf16_bits_to_float32(bits)
    assert got.tolist() == [1.0, -3.0, 2.0 ** -133, np.inf]
    # rounding to nearest even on the way back: 1 + 2**-8 is a tie between 1.0 and 1 + 2**-7 -> even (1.0)
    assert float32_to_bf16_bits(np.array([1.0 + 2 ** -8], np.float32))[0] == 0x3F80
    assert float32_to_bf16_bits(np.array([1.0 + 3 * 2 ** -8], np.float32))[0] == 0x3F82


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("bf16", [False, True])
def test_load_single_and_sharded(tmp_path, shards, bf16):
    tensors = write_text_checkpoint(tmp_path, bf16=bf16, shards=shards)
    for dtype in (np.float32, np.float64):
        ck = Checkpoint(tmp_path, dtype=dtype)
        assert ck.text_prefix == "model."
        assert sorted(ck.names) == sorted(tensors)
        for name, t in tensors.items():
            want = bf16_bits_to_float32(t.bits) if bf16 else t
            got = ck.get(name)
            assert got.dtype == dtype
            # widening float32 (or bf16) to float64 is exact, so equality is exact
            np.testing.assert_array_equal(got, want.astype(dtype))


def test_rows_gathers_without_loading_table(tmp_path):
    tensors = write_text_checkpoint(tmp_path, bf16=True)
    ck = Checkpoint(tmp_path)
    name = "model.embed_tokens_per_layer.weight"
    ids = np.array([[3, 0], [31, 3]])
    got = ck.rows(name, ids)
    assert got.shape == (2, 2, 3 * 4)
    np.testing.assert_array_equal(got, bf16_bits_to_float32(tensors[name].bits)[ids])
    assert name not in ck._cache  # rows() never makes the table resident


def test_params_view(tmp_path):
    write_text_checkpoint(tmp_path)
    ck = Checkpoint(tmp_path)
    p = ck.params("model.layers.1.laurel")
    assert sorted(p) == ["linear_left.weight", "linear_right.weight", "post_laurel_norm.weight"]
    assert p["linear_left.weight"].shape == (2, 8)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.laurel\.nope"):
        p["nope"]


def test_float64_roundtrip_exact(tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 5))
    save_safetensors(tmp_path / "a.safetensors", {"x": x, "y": x.astype(np.float16)})
    got, _ = load_safetensors(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(got["x"], x)
    assert got["y"].dtype == np.float16


def test_save_is_deterministic(tmp_path):
    x = {"b": np.ones(3, np.float32), "a": np.zeros((2, 2), np.float64)}
    save_safetensors(tmp_path / "1.safetensors", x, {"k": "v"})
    save_safetensors(tmp_path / "2.safetensors", dict(reversed(list(x.items()))), {"k": "v"})
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


# ---- every bad input names the culprit ------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*not found"):
        Checkpoint(tmp_path / "nowhere")


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        Checkpoint(tmp_path)


def test_missing_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_TEXT))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint(tmp_path)


def test_index_names_absent_shard(tmp_path):
    write_text_checkpoint(tmp_path, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        Checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    write_text_checkpoint(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated file: tensor '.*' ends at byte"):
        Checkpoint(tmp_path)
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated file"):
        Checkpoint(tmp_path)


def test_corrupt_header(tmp_path):
    write_text_checkpoint(tmp_path)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8] = ord("#")  # the JSON header no longer parses
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt header"):
        Checkpoint(tmp_path)
    f.write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")  # header longer than the file
    with pytest.raises(CheckpointError, match="corrupt header .*header length 1000000000"):
        Checkpoint(tmp_path)


def test_unsupported_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_TEXT))
    head = json.dumps({"model.norm.weight": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
    with pytest.raises(CheckpointError, match="'model.norm.weight' has dtype I8"):
        Checkpoint(tmp_path)


def test_missing_tensor(tmp_path):
    write_text_checkpoint(tmp_path, drop=("model.layers.2.laurel.linear_left.weight",))
    ck = Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.2\.laurel\.linear_left\.weight' is missing"):
        ck.check_shapes(text_weight_shapes(ck.config.text, ck.text_prefix))


def test_wrong_shape(tmp_path):
    write_text_checkpoint(tmp_path, reshape={"model.layers.0.mlp.up_proj.weight": (15, 8)})
    ck = Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \[15, 8\], "
                                              r"the config needs \[16, 8\]"):
        ck.check_shapes(text_weight_shapes(ck.config.text, ck.text_prefix))


def test_kv_shared_extras_tolerated(tmp_path):
    """KV-shared layers' k/v projections are not in the expected set, so their presence is harmless."""
    cfg = dict(TINY_TEXT, num_kv_shared_layers=1, layer_types=["sliding_attention", "full_attention",
                                                                "full_attention"])
    write_text_checkpoint(tmp_path, cfg_dict=cfg)
    ck = Checkpoint(tmp_path)
    exp = text_weight_shapes(ck.config.text, ck.text_prefix)
    assert "model.layers.2.self_attn.k_proj.weight" not in exp
    extra = {"model.layers.2.self_attn.k_proj.weight": np.zeros((4, 8), np.float32)}
    save_safetensors(tmp_path / "extra.safetensors", extra)
    ck.check_shapes(exp)


def test_safetensors_file_names(tmp_path):
    save_safetensors(tmp_path / "x.safetensors", {"a": np.ones((2, 3), np.float32)})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.names == ["a"] and f.info("a") == ("F32", (2, 3))
