"""MatFormer slicing of a checkpoint directory (NumPy tier): a tiny random BF16 checkpoint written here, cut by
minig3n, compared tensor by tensor with the source (bit patterns), through the CLI for the error cases."""
import json
from pathlib import Path

import numpy as np
import pytest

from minig3n.checkpoint import Checkpoint, SafetensorsFile, as_bf16, save_safetensors, text_weight_shapes
from minig3n.cli import main as cli_main
from minig3n.config import TextConfig
from tests.adapters.matformer import run_count_checkpoint, run_slice

pytestmark = pytest.mark.matformer

PRE = "model.language_model."
# 12 layers: full attention at 4 and 9 (every 5th), the rest sliding; layers 8..11 share K/V, reusing layer 7
# (sliding) and layer 4 (full); activation sparsity 0.95 on layers 0..9 (the default for L > 10).
TINY_TEXT = dict(vocab_size=300, vocab_size_per_layer_input=256, hidden_size=64, hidden_size_per_layer_input=8,
                 intermediate_size=[128] * 6 + [96] * 6, num_hidden_layers=12, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, laurel_rank=8, num_kv_shared_layers=4, sliding_window=8,
                 max_position_embeddings=256)
TOWERS = {"model.audio_tower.conformer.0.norm.weight": (16,),
          "model.audio_tower.subsample_conv_projection.conv_0.conv.weight": (4, 1, 3, 3),
          "model.vision_tower.timm_model.conv_stem.conv.weight": (8, 3, 3, 3),
          "model.embed_audio.embedding.weight": (4, 16), "model.embed_vision.embedding_projection.weight": (64, 8)}
EXTRA_FILES = {"tokenizer.model": b"\x00\x01sentencepiece-bytes\xff", "tokenizer_config.json": b'{"a": 1}\n',
               "preprocessor_config.json": b'{"feature_size": 128}\n', "assets/notes.txt": b"carried over\n"}


def write_tiny_checkpoint(directory: Path, seed: int = 0, bf16: bool = True) -> Path:
    """A random multimodal-layout checkpoint with the tensor set of an official one (the KV-shared layers
    carry k_proj/v_proj/k_norm) plus a few stand-in tower tensors and non-weight files."""
    directory.mkdir(parents=True)
    text = TextConfig(**TINY_TEXT)
    shapes = dict(text_weight_shapes(text, PRE))
    for li in range(text.first_kv_shared_layer, text.num_hidden_layers):   # stored, never read
        p = f"{PRE}layers.{li}.self_attn."
        shapes.update({p + "k_proj.weight": (32, 64), p + "v_proj.weight": (32, 64), p + "k_norm.weight": (32,)})
    shapes.update(TOWERS)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        is_scale = name.endswith(("norm.weight", "correct_output_scale"))
        x = (1.0 + 0.1 * rng.standard_normal(shape)) if is_scale else 0.05 * rng.standard_normal(shape)
        tensors[name] = as_bf16(x) if bf16 else x.astype(np.float32)
    save_safetensors(directory / "model.safetensors", tensors, {"format": "pt"})
    cfg = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
           "text_config": {**text.to_dict(), "intermediate_size": text.intermediate_size},
           "audio_config": {"model_type": "gemma3n_audio"}, "vision_config": {"model_type": "gemma3n_vision"},
           "boi_token_id": 290, "eoi_token_id": 291, "image_token_id": 292, "boa_token_id": 293,
           "eoa_token_id": 294, "audio_token_id": 295, "torch_dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    for rel, data in EXTRA_FILES.items():
        (directory / rel).parent.mkdir(exist_ok=True)
        (directory / rel).write_bytes(data)
    return directory


def raw_tensors(directory: Path) -> dict:
    """{name: (stored dtype, stored bits as an array)} of every tensor in a checkpoint directory."""
    ck = Checkpoint(directory)
    return {n: (ck.stored_dtype(n), np.array(ck.files[ck.where[n]].raw(n))) for n in ck.names}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("mf") / "tiny")


SKIP = [2, 8, 10]                      # a sparse sliding layer and two KV-shared sliding layers
WIDTHS = [128, 64, 100, 128, 1, 96, 50, 96, 48]      # 9 kept layers: source layers 0 1 3 4 5 6 7 9 11


def test_sliced_tensors_are_exact_prefixes_and_subsets(tiny, tmp_path):
    """Every output tensor is the stored bits of its source: gate/up rows :d, down columns :d, kept layers
    renumbered in order, the PLE table's and projection's 8-wide layer blocks of the kept layers, towers and
    all other tensors byte-identical; BF16 stays BF16."""
    out = run_slice(tiny, tmp_path / "cut", WIDTHS, SKIP)
    src, dst = raw_tensors(tiny), raw_tensors(out)
    kept = [i for i in range(12) if i not in SKIP]
    expected = set()
    for name in src:
        if name.startswith(PRE + "layers."):
            old = int(name.split(".")[3])
            if old in kept:
                expected.add(name.replace(f"layers.{old}.", f"layers.{kept.index(old)}.", 1))
        else:
            expected.add(name)
    assert set(dst) == expected
    P = 8
    cols = np.concatenate([np.arange(P * li, P * li + P) for li in kept])
    for name, (dt, bits) in dst.items():
        assert dt == "BF16" and bits.dtype == np.uint16, name
        if name.startswith(PRE + "layers."):
            new = int(name.split(".")[3])
            old = kept[new]
            sdt, sbits = src[name.replace(f"layers.{new}.", f"layers.{old}.", 1)]
            d = WIDTHS[new]
            if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                want = sbits[:d]
            elif name.endswith("mlp.down_proj.weight"):
                want = sbits[:, :d]
            else:
                want = sbits
        elif name == PRE + "embed_tokens_per_layer.weight":
            want = src[name][1][:, cols]
        elif name == PRE + "per_layer_model_projection.weight":
            want = src[name][1][cols]
        else:
            want = src[name][1]
        assert bits.shape == want.shape and np.array_equal(bits, want), name
    assert dst[PRE + "embed_tokens_per_layer.weight"][1].shape == (256, 9 * P)


def test_sliced_config_is_consistent(tiny, tmp_path):
    """Kept layers: 0 1 3 4 5 6 7 | 9 11. Types follow their layers (full at source 4 and 9 -> new 3 and 7);
    KV-shared layers 8..11 lose 8 and 10, so num_kv_shared_layers 4 -> 2 and new layers 7, 8 still reuse
    source layers 4 and 7 (new 3 and 6); sparsity 0.95 on the 8 kept layers among 0..9, 0 on source 11."""
    out = run_slice(tiny, tmp_path / "cut", WIDTHS, SKIP)
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((tiny / "config.json").read_text())
    t = cfg["text_config"]
    assert t["num_hidden_layers"] == 9 and t["intermediate_size"] == WIDTHS and t["num_kv_shared_layers"] == 2
    full, slide = "full_attention", "sliding_attention"
    assert t["layer_types"] == [slide, slide, slide, full, slide, slide, slide, full, slide]
    assert t["activation_sparsity_pattern"] == [0.95] * 8 + [0.0]
    from minig3n.kv_share import kv_producer
    from minig3n.config import Gemma3nConfig
    new = Gemma3nConfig.from_file(out / "config.json").text
    assert [kv_producer(new, i) for i in range(9)] == [None] * 7 + [3, 6]
    # everything else in config.json is untouched, key order included
    assert list(cfg) == list(src) and {k: v for k, v in cfg.items() if k != "text_config"} == \
        {k: v for k, v in src.items() if k != "text_config"}
    changed = {k for k in t if t[k] != src["text_config"].get(k)}
    assert changed == {"num_hidden_layers", "intermediate_size", "layer_types", "num_kv_shared_layers",
                       "activation_sparsity_pattern"}


def test_other_files_carried_over(tiny, tmp_path):
    out = run_slice(tiny, tmp_path / "cut", None, [9 + 1])
    for rel, data in EXTRA_FILES.items():
        assert (out / rel).read_bytes() == data, rel
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["assets", "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.model",
         "tokenizer_config.json"])


def test_full_size_spec_is_the_identity(tiny, tmp_path):
    """No skip, every width kept: the same tensors, bit for bit, and the same config values."""
    out = run_slice(tiny, tmp_path / "same", None, [])
    src, dst = raw_tensors(tiny), raw_tensors(out)
    assert set(src) == set(dst)
    for n in src:
        assert src[n][0] == dst[n][0] and np.array_equal(src[n][1], dst[n][1]), n
    a, b = Checkpoint(tiny).config.text, Checkpoint(out).config.text
    assert a.to_dict() == b.to_dict()


def test_full_size_spec_gives_bit_identical_logits(tiny, tmp_path):
    """minig3n's decoder on the original and on the full-size slice: identical float32 logits."""
    from minig3n.decoder import forward, load_text_model
    out = run_slice(tiny, tmp_path / "same", [128] * 6 + [96] * 6, [])
    ids = np.array([[2, 17, 255, 3, 299, 40, 41, 7, 9, 11]])
    want, _ = forward(load_text_model(tiny, np.float32), ids)
    got, _ = forward(load_text_model(out, np.float32), ids)
    assert np.array_equal(got, want)


def test_narrow_ffn_equals_zeroed_hidden_units(tiny, tmp_path):
    """Hand-derived check of what a prefix means: in a layer without activation sparsity (source 10 and 11),
    keeping d hidden units gives the MLP output of the full layer whose units d.. have zero gate and up rows
    (gelu(0) * 0 = 0 adds nothing). Float64, so the only difference is summation order: <= 1e-12 relative."""
    from minig3n.decoder import forward, load_text_model
    widths = [128] * 6 + [96] * 4 + [40, 7]
    out = run_slice(tiny, tmp_path / "narrow", widths, [])
    zeroed = tmp_path / "zeroed"
    write_tiny_checkpoint(zeroed)                                    # same seed: the same weights
    ck = Checkpoint(zeroed, np.float64)
    tensors = {n: ck.get(n).copy() for n in ck.names}
    for li, d in ((10, 40), (11, 7)):
        for w in ("gate_proj", "up_proj"):
            tensors[f"{PRE}layers.{li}.mlp.{w}.weight"][d:] = 0.0
    save_safetensors(zeroed / "model.safetensors", tensors)          # float64, values exactly the BF16 ones
    ids = np.array([[2, 5, 250, 3, 299, 77, 1, 8]])
    want, _ = forward(load_text_model(zeroed, np.float64), ids)
    got, _ = forward(load_text_model(out, np.float64), ids)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"narrow vs zeroed: rel err {err:.2e} (limit 1e-12)")
    assert err <= 1e-12


def test_sharded_output_with_index(tiny, tmp_path):
    """With a 20 kB shard limit the slice is written as model-0000k-of-0000N.safetensors + index; the index
    covers every tensor, no shard exceeds the limit unless it holds a single larger tensor, and the
    tensors equal those of the single-file slice."""
    one = run_slice(tiny, tmp_path / "one", WIDTHS, SKIP)
    many = run_slice(tiny, tmp_path / "many", WIDTHS, SKIP, max_shard_bytes=20_000)
    index = json.loads((many / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(p.name for p in many.glob("*.safetensors")) == shards and not (many / "model.safetensors").exists()
    for s in shards:
        f = SafetensorsFile(many / s)
        sizes = [np.prod(f.info(n)[1]) * 2 for n in f.names]
        assert sum(sizes) <= 20_000 or len(sizes) == 1, s
    assert index["metadata"]["total_size"] == sum(b.nbytes for _, b in raw_tensors(many).values())
    a, b = raw_tensors(one), raw_tensors(many)
    assert set(a) == set(b) and all(np.array_equal(a[n][1], b[n][1]) for n in a)


def test_counts_from_checkpoint_follow_the_slice(tiny, tmp_path):
    """The parameter count of the written slice equals the count planned from the source, and the text part
    shrinks by exactly the dropped tensors."""
    from minig3n.matformer import SliceSpec, count_checkpoint
    out = run_slice(tiny, tmp_path / "cut", WIDTHS, SKIP)
    planned = count_checkpoint(tiny, SliceSpec(WIDTHS, SKIP))
    written = run_count_checkpoint(out)
    assert (planned.total, planned.text, planned.effective) == (written["total"], written["text"], written["effective"])
    src = run_count_checkpoint(tiny)
    assert src["total"] - written["total"] == src["text"] - written["text"] > 0
    assert written["lm_head"] == 300 * 64        # tied, not stored: counted separately


BAD = [
    (["--ffn-dims", "128", "128"], "2 widths given, but 12 layers are kept"),
    (["--ffn-dims", "128", "128", "128", "128", "128", "129"] + ["96"] * 6, "width 129 for layer 5"),
    (["--skip-layers", "7"], "layer 7 cannot be skipped"),
    (["--skip-layers", "4"], "layer 4 cannot be skipped"),
    (["--skip-layers", "4", "9"], "removes every full_attention layer"),
    (["--skip-layers", "12"], "out of range"),
    (["--skip-layers", "3", "3"], "listed twice"),
    (["--ffn-dims", "12x"], "cannot read '12x'"),
    (["--config", "E2.98B"], "ambiguous"),
    ([], "say what to keep"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_specs_exit_2_and_write_nothing(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = cli_main(["slice", "--model", str(tiny), "--out", str(out)] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_directory_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli_main(["slice", "--model", str(tiny), "--out", str(out), "--skip-layers", "10"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_skipping_a_producer_is_allowed_once_its_readers_are_gone(tiny, tmp_path):
    """Layer 7 is the sliding producer; its readers are 8, 10, 11. Skipping all four leaves a valid model
    whose KV-shared part is layer 9 alone, still reading layer 4."""
    out = run_slice(tiny, tmp_path / "cut", None, [7, 8, 10, 11])
    t = json.loads((out / "config.json").read_text())["text_config"]
    assert t["num_hidden_layers"] == 8 and t["num_kv_shared_layers"] == 1
    from minig3n.config import Gemma3nConfig
    from minig3n.kv_share import kv_producer
    assert kv_producer(Gemma3nConfig.from_file(out / "config.json").text, 7) == 4


def test_a_failure_midway_leaves_nothing(tiny, tmp_path, monkeypatch):
    """A write that fails after the first shard (disk full, interrupt) removes the partial directory."""
    from minig3n import matformer
    real, calls = matformer._write_shard, []

    def failing(path, entries, ckpt):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, entries, ckpt)

    monkeypatch.setattr(matformer, "_write_shard", failing)
    from minig3n.atomic import OutputError
    with pytest.raises(OutputError, match=r"cannot write .*cut: No space left on device"):   # one line, named
        run_slice(tiny, tmp_path / "cut", None, [10], max_shard_bytes=20_000)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_slice_command_with_a_size_limit(tiny, tmp_path, capsys):
    code = cli_main(["slice", "--model", str(tiny), "--out", str(tmp_path / "cut"), "--ffn-dims",
                     "2*64 " * 6 + "96 " * 4 + "48", "--skip-layers", "8", "--max-shard-size", "40KB"])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "cut" / "model.safetensors.index.json").exists()
    assert Checkpoint(tmp_path / "cut").config.text.intermediate_size == [128] * 6 + [96] * 4 + [48]


def test_streaming_in_small_blocks_gives_the_same_files(tiny, tmp_path, monkeypatch):
    """The writer copies each tensor a block of rows at a time (64 MB by default, so E4B's 4.7 GB PLE table is
    never resident). With 1 kB blocks every gather and prefix path runs over many blocks: same bytes."""
    from minig3n import matformer
    run_slice(tiny, tmp_path / "big", WIDTHS, SKIP)
    monkeypatch.setattr(matformer, "BLOCK_BYTES", 1000)
    run_slice(tiny, tmp_path / "small", WIDTHS, SKIP)
    big, small = (tmp_path / d / "model.safetensors" for d in ("big", "small"))
    assert big.read_bytes() == small.read_bytes()


def test_table_option_reads_another_csv(tiny, tmp_path, capsys):
    """--table FILE: a row named "Tiny cut" in Google's column layout (products like 2_048 * 4 allowed)."""
    table = tmp_path / "configs.csv"
    table.write_text('name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped\n'
                     'Tiny cut,11,0.0004,1.00%,"[32 * 4, 64, 64, 64, 64, 64, 48, 48, 48, 48, 96]","[10]"\n')
    code = cli_main(["slice", "--model", str(tiny), "--out", str(tmp_path / "cut"), "--table", str(table),
                     "--config", "tiny"])
    assert code == 0, capsys.readouterr().err
    t = Checkpoint(tmp_path / "cut").config.text
    assert t.intermediate_size == [128] + [64] * 5 + [48] * 4 + [96] and t.num_hidden_layers == 11


def test_a_checkpoint_that_disagrees_with_its_config_is_refused(tiny, tmp_path, capsys):
    """config.json says layer 3 is 128 wide; a file claiming 96 would be sliced wrongly: refused, naming it."""
    bad = tmp_path / "bad"
    write_tiny_checkpoint(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["text_config"]["intermediate_size"][3] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    code = cli_main(["slice", "--model", str(bad), "--out", str(tmp_path / "cut"), "--skip-layers", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "layers.3.mlp.gate_proj.weight" in err, err
    assert not (tmp_path / "cut").exists()
