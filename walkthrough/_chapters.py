"""The cell sources of every walkthrough chapter: {chapter name: [("md" | "code", source), ...]}.

Edit here, then ``python walkthrough/_build.py`` writes the .ipynb files. Rules for code cells (checked by
tests/test_walkthrough.py): plain Python (no IPython magics), fast (< 5 s per chapter), deterministic, no
network, no torch; every comparison with the reference prints its relative error and asserts it.
"""

SETUP = '''
# Setup. Run the notebook from walkthrough/ (Jupyter's default). The repo root goes on sys.path so that the
# golden fixtures' reader (tests/golden_io.py) is importable; minig3n itself is installed (pip install -e .).
import sys
from pathlib import Path

ROOT = Path.cwd().resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
from tests.golden_io import load_golden, rel_err

# float32 runs against the reference's float32 outputs, float64 runs against its lifted float64 outputs
# (tests/README.md: 1e-5 per module in float32, 1e-10 in float64).
MODES = [(np.float32, "out32", 1e-5), (np.float64, "out64", 1e-10)]


def check(name, got, want, tol):
    """Print the relative error max|got - want| / max|want| and assert it is within tol."""
    e = rel_err(got, want)
    print(f"{name:<44} rel err {e:9.2e}   (tol {tol:g})")
    assert e <= tol, f"{name}: rel err {e:.3g} > {tol}"
    return e
'''


def exercise(text: str) -> tuple:
    return ("md", "## Exercise\n\n" + text.strip() + "\n\nThe workflow (copy the signature, raise "
            "`NotImplementedError`, implement, run the tests) is in [ASSIGNMENTS.md](ASSIGNMENTS.md).")


CHAPTERS = {}

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["01_config_checkpoint"] = [
    ("md", '''
# 01 · Config and checkpoint: reading a Hugging Face Gemma 3n with NumPy

A Gemma 3n checkpoint is a directory: `config.json` (every number the model uses) and `model.safetensors`
(or shards plus `model.safetensors.index.json`). minig3n reads both **unmodified**:

* `minig3n.config` turns `config.json` into dataclasses with the same key names (`TextConfig`,
  `AudioConfig`, `VisionConfig`, `Gemma3nConfig`). Its docstring holds the **legend of shape letters**
  used in every shape comment (`B` batch, `T` tokens, `D` hidden, `K` AltUp streams, `L` layers, `P`
  per-layer width, ...).
* `minig3n.checkpoint` memory-maps the safetensors files and converts a tensor to float32 (or float64)
  only when it is used. BF16 has no NumPy dtype: its 16 bits are the top half of a float32, so widening is
  a shift and **exact**.
* The per-layer-embedding table (`embed_tokens_per_layer`, 262144 x 7680 in E2B, about 2 B parameters) is
  never loaded whole: `Checkpoint.rows` gathers the rows of the ids at hand from the memory map.

Module: `minig3n/config.py`, `minig3n/checkpoint.py`. We use the tiny random multimodal checkpoint
`weights/tiny-random-gemma3n` (written by transformers 5.24, stored in BF16).
'''),
    ("code", SETUP),
    ("code", '''
from minig3n.config import FULL, Gemma3nConfig, e2b_config

TINY = ROOT / "weights" / "tiny-random-gemma3n"
cfg = Gemma3nConfig.from_file(TINY / "config.json")
t = cfg.text
print("model_type", cfg.model_type, "| multimodal:", cfg.is_multimodal)
print(f"text: L={t.num_hidden_layers} D={t.hidden_size} N={t.num_attention_heads} G={t.num_key_value_heads} "
      f"E={t.head_dim} P={t.hidden_size_per_layer_input} K={t.altup_num_inputs} V={t.vocab_size}")
print("layer types      ", ["F" if lt == FULL else "S" for lt in t.layer_types])
print("sparsity         ", t.activation_sparsity_pattern)
print("first KV-shared layer", t.first_kv_shared_layer)
'''),
    ("md", '''
The real models follow the same rules at full size. E2B: 30 layers, every 5th one full attention (4, 9,
14, ...), the first 10 layers with 95 % activation sparsity, the last 10 layers reuse keys/values of
earlier ones (chapter 05).
'''),
    ("code", '''
e2b = e2b_config().text
assert [i for i, lt in enumerate(e2b.layer_types) if lt == FULL] == [4, 9, 14, 19, 24, 29]
assert e2b.activation_sparsity_pattern == [0.95] * 10 + [0.0] * 20
assert e2b.first_kv_shared_layer == 20
print("E2B: intermediate sizes", set(e2b.intermediate_size), "| PLE width L*P =",
      e2b.num_hidden_layers * e2b.hidden_size_per_layer_input)
'''),
    ("md", '''
## The safetensors format, by hand

8 bytes (little-endian length n), n bytes of JSON header (dtype, shape, byte range of each tensor), then
the raw bytes. That is all `SafetensorsFile` parses.
'''),
    ("code", '''
import json
import struct

path = TINY / "model.safetensors"
with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
NAME = "model.language_model.layers.0.laurel.linear_left.weight"
print(len(header), "tensors; e.g.", NAME, "->", header[NAME])
print("dtypes stored:", sorted({h["dtype"] for h in header.values()}))
'''),
    ("code", '''
from minig3n.checkpoint import Checkpoint, bf16_bits_to_float32, float32_to_bf16_bits, text_weight_shapes

ck = Checkpoint(TINY)                     # float32 working dtype (Checkpoint(TINY, np.float64) for float64)
raw = ck.files[ck.where[NAME]].raw(NAME)  # a read-only view into the memory map: uint16 BF16 bit patterns
w = ck.get(NAME)                          # converted once (widening: exact)
print(raw.dtype, raw.shape, "writeable:", raw.flags.writeable, "->", w.dtype)
assert np.array_equal(w, bf16_bits_to_float32(raw))
assert np.array_equal(float32_to_bf16_bits(w), raw)          # round trip: no information lost
assert np.array_equal(Checkpoint(TINY, np.float64).get(NAME), w.astype(np.float64))

# The HF names are kept as they are; a multimodal checkpoint puts the text model under model.language_model.
print("text prefix:", ck.text_prefix)
ck.check_shapes(text_weight_shapes(t, ck.text_prefix))      # every text tensor has the shape the config implies
laurel_p = ck.params(ck.text_prefix + "layers.0.laurel")     # a module's weights under names relative to it
print(sorted(laurel_p))
'''),
    ("md", '''
**Trap (numerics doc §0): constants in BF16.** Hub checkpoints are BF16, and a BF16 run of the reference
rounds every scale buffer to BF16 too: the embedding scale sqrt(2048) = 45.254833 becomes 45.25. Compare
against the reference loaded in **float32** (widened weights, float32 constants), as minig3n does.
'''),
    ("code", '''
s = np.array([2048 ** 0.5], dtype=np.float32)
s_bf16 = bf16_bits_to_float32(float32_to_bf16_bits(s))
print(f"sqrt(2048): float32 {s[0]:.6f}   bf16 {s_bf16[0]:.6f}")
assert s_bf16[0] == 45.25
'''),
    ("md", '''
## The per-layer-embedding table, row by row

`Checkpoint.rows(name, ids)` reads only the rows of `ids` from the memory map. In E2B the table holds
262144 x 7680 BF16 values (4 GB); a prompt touches a few hundred rows of it.
'''),
    ("code", '''
TABLE = ck.text_prefix + "embed_tokens_per_layer.weight"
ids = np.array([[2, 17, 5]])
rows = ck.rows(TABLE, ids)                                          # [B, T, L*P]
print("table", ck.shape(TABLE), ck.stored_dtype(TABLE), "-> rows", rows.shape, rows.dtype)
table_raw = ck.files[ck.where[TABLE]].raw(TABLE)                    # memory-mapped, nothing read yet
assert np.array_equal(rows[0, 1], bf16_bits_to_float32(table_raw[17]))

U, LP = e2b.vocab_size_per_layer_input, e2b.num_hidden_layers * e2b.hidden_size_per_layer_input
print(f"E2B table: {U} x {LP} = {U * LP / 1e9:.2f} B parameters = {U * LP * 2 / 2**30:.2f} GiB in BF16; "
      f"a 3-token prompt reads {3 * LP * 2 / 1024:.0f} KiB of it")
'''),
    ("md", '''
## Sharded checkpoints

Big checkpoints come in shards: `model-00001-of-0000N.safetensors` files plus `model.safetensors.index.json`,
whose `weight_map` says which shard holds each tensor. `Checkpoint` reads both layouts. Here the tiny
checkpoint is re-written in 1 MiB shards (by `minig3n slice` with an identity spec, chapter 10) and read
back: every tensor is bit-identical.
'''),
    ("code", '''
import tempfile

from minig3n.matformer import SliceSpec, slice_checkpoint

with tempfile.TemporaryDirectory() as tmp:
    sharded = slice_checkpoint(TINY, Path(tmp) / "sharded", SliceSpec(), max_shard_bytes=1 << 20)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    print("shards:", sorted(set(index["weight_map"].values())))
    ck2 = Checkpoint(sharded)
    assert sorted(ck2.names) == sorted(ck.names)
    assert all(np.array_equal(ck2.get(n), ck.get(n)) for n in ck.names)
print("all", len(ck.names), "tensors identical")
'''),
    ("md", '''
The end-to-end proof that every tensor is read right comes in chapter 08: this checkpoint, run through
minig3n's decoder, produces the reference's greedy tokens, token for token.
'''),
    exercise('''
Re-implement `bf16_bits_to_float32` (and, if you like, the header parsing of `SafetensorsFile`) from
`minig3n/checkpoint.py`. This chapter has no student-graded function (the loader's tests live in
`tests/test_checkpoint.py`, marker `foundation`): check your version against `Checkpoint.get` on the tiny
checkpoint as above.
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["02_per_layer_embeddings"] = [
    ("md", '''
# 02 · Per-layer embeddings (PLE)

Besides the usual token embedding (width D), Gemma 3n gives **every decoder layer its own small embedding
of each token**. Two parts, computed once before layer 0 (numerics doc §1.3):

1. **Token part**: look the token up in a huge table with L*P columns (`embed_tokens_per_layer`,
   layer-major: layer l owns columns l*P .. l*P+P-1), times sqrt(P) (16.0 for P = 256).
2. **Projection part**: project the final input embedding with `per_layer_model_projection` [L*P, D],
   times D^-0.5, reshape to [L, P], RMS-norm over P with one shared weight [P].

`ple = (projection + token part) * 1/sqrt(2)`; layer l receives `ple[:, :, l, :]` and mixes it into the
AltUp streams after its MLP (chapter 07). In E2B the table alone holds 2.0 B parameters, about as many
as the rest of the decoder; the "2B" of E2B counts *effective* parameters, which leave out the embedding
tables (chapter 10), and the table stays on disk, read row by row (chapter 01).

Module: `minig3n/ple.py` (`ple_ids`, `per_layer_token_inputs`, `project_per_layer_inputs`,
`per_layer_inputs`). Fixture: `tests/goldens/text_ple.safetensors`.
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import ple
from minig3n.config import TextConfig

g = load_golden("text_ple")
cfg = TextConfig.from_dict(g.meta["config"])
L, P, U = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.vocab_size_per_layer_input
ids = g.inputs["input_ids"].astype(np.int64)                         # [B, T]
print(f"L={L} P={P} U={U} D={cfg.hidden_size}; ids row 0:", ids[0])
'''),
    ("md", '''
**Trap: ids outside the table are mapped to row 0, not clamped.** The vocabulary (V) is larger than the
PLE table (U): the image/audio token ids (>= 262144 in E2B) have no PLE row. The reference maps them to
**row 0** (which is used as stored, not zeroed). Clamping to U - 1 would read another row.
'''),
    ("code", '''
pid = ple.ple_ids(ids, U)                                            # [B, T]
outside = ids >= U
print("ids >= U:", ids[outside], "-> rows", pid[outside])
assert (pid[outside] == 0).all() and (pid[~outside] == ids[~outside]).all()
'''),
    ("code", '''
for dt, out, tol in MODES:
    table = g.weights["embed_tokens_per_layer.weight"].astype(dt)    # [U, L*P]
    x = g.inputs["inputs_embeds"].astype(dt)                         # [B, T, D]
    tok = ple.per_layer_token_inputs(table[pid], L, P)               # [B, T, L, P]
    check(f"token part ({np.dtype(dt).name})", tok, getattr(g, out)["token_inputs"], tol)
    full = ple.per_layer_inputs(ids, x, table.__getitem__, g.weights, cfg)   # [B, T, L, P]
    check(f"per_layer_inputs ({np.dtype(dt).name})", full, getattr(g, out)["per_layer_inputs"], tol)
'''),
    ("md", '''
The layout is layer-major: the reshape [L*P] -> [L, P] gives layer l the columns l*P .. l*P+P-1 (this is
also what lets MatFormer drop a layer's PLE by deleting its column block, chapter 10).
'''),
    ("code", '''
row = g.weights["embed_tokens_per_layer.weight"][pid[0, 0]]         # [L*P]
tok0 = ple.per_layer_token_inputs(row[None, None], L, P)[0, 0]      # [L, P]
for l in range(L):
    assert np.array_equal(tok0[l], row[l * P:(l + 1) * P] * np.float32(P ** 0.5))
print("layer 2's slice:", tok0[2][:4], "...")
'''),
    ("md", '''
**Trap: the D^-0.5 scale sits before the norm.** A norm undoes a scale, except through its eps: dropping
the scale changes the output a little, far above float64 round-off. Required for exactness.
'''),
    ("code", '''
from minig3n.ops import linear, rms_norm

x = g.inputs["inputs_embeds"].astype(np.float64)
proj = linear(x, g.weights["per_layer_model_projection.weight"]).reshape(*x.shape[:2], L, P)
w = g.weights["per_layer_projection_norm.weight"]
with_scale = rms_norm(proj * np.float32(cfg.hidden_size ** -0.5), w, cfg.rms_norm_eps)
without = rms_norm(proj, w, cfg.rms_norm_eps)
e = rel_err(without, with_scale)
print(f"dropping the D^-0.5 scale: rel err {e:.2e} (float64 agreement is 1e-10)")
assert e > 1e-8
'''),
    exercise('''
Implement `ple_ids`, `per_layer_token_inputs`, `project_per_layer_inputs` and `per_layer_inputs` in your
own `ple.py` (signatures and docstrings from `minig3n/ple.py`). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k ple
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["03_altup"] = [
    ("md", '''
# 03 · AltUp: a wide residual stream for the price of a narrow layer

AltUp (Alternating Updates, Baykal et al. 2023) keeps **K = 4 streams** of width D, but every layer runs on
one of them (the *active* stream 0). Around each layer (numerics doc §1.4, §1.5 steps 1 and 7, §1.8):

* **predict**: a router reads the active stream, `r = tanh(router_norm(X_0) / D @ W_router^T)` [K];
  `C = reshape(r @ W_pred^T, [K, K])`; `P_i = X_i + sum_j C[i, j] X_j`.
* the layer transforms `P_0` into `o`;
* **correct**: `c = router(o) @ W_corr^T + 1`; `Q_i = P_i + c_i (o - P_0)`.

Streams 1..K-1 are made from the token embedding by D x D projections rescaled to the embedding's RMS
(`make_streams`), and folded back the same way before the final norm (`collapse_streams`).

Module: `minig3n/altup.py`. Fixtures: `text_altup` (predict/correct on random streams),
`text_altup_streams` (stream creation and collapse).
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import altup
from minig3n.config import TextConfig

g = load_golden("text_altup")
cfg = TextConfig.from_dict(g.meta["config"])
K, p = cfg.altup_num_inputs, g.weights
print("streams", g.inputs["streams"].shape, "[K, B, T, D]; weights:", sorted(p))

for dt, out, tol in MODES:
    o = getattr(g, out)
    X, act = g.inputs["streams"].astype(dt), g.inputs["activated"].astype(dt)
    name = np.dtype(dt).name
    check(f"router_modalities ({name})", altup.router_modalities(act, p, cfg), o["router_modalities"], tol)
    check(f"predict ({name})", altup.predict(X, p, cfg), o["predict"], tol)
    # correct() on the reference's own predictions, so its error is not predict's again
    Q = altup.correct(o["predict"].astype(dt), act, p, cfg)
    check(f"correct ({name})", Q, o["correct"], tol)
    check(f"scale_corrected_output ({name})", altup.scale_corrected_output(Q[0], p), o["scale_corrected_output"], tol)
'''),
    ("md", '''
**Trap: the orientation of C.** The reference permutes and matmuls; it reduces to `C[i, j] = (r W_pred^T)[K*i + j]`
(row-major) and `P_i = X_i + sum_j C[i, j] X_j`. Written out for one token with loops:
'''),
    ("code", '''
X = g.inputs["streams"].astype(np.float64)
r = altup.router_modalities(X[0], p, cfg)                                   # [B, T, K]
C = (r @ p["prediction_coefs.weight"].T.astype(np.float64)).reshape(*r.shape[:2], K, K)   # [B, T, K, K]
b, t_ = 1, 5
loops = np.stack([X[i, b, t_] + sum(C[b, t_, i, j] * X[j, b, t_] for j in range(K)) for i in range(K)])
check("predict, one token by loops", loops, altup.predict(X, p, cfg)[:, b, t_], 1e-12)
'''),
    ("md", '''
**Experiment: identity coefficients.** With `prediction_coefs = 0`, C = 0 and the prediction is the input.
With `correction_coefs = 0`, every gain is 0 + 1 = 1: every stream moves by the same innovation `o - P_0`,
and stream 0 becomes exactly o. **Trap:** the innovation is taken against the *prediction* P_0, not the
layer input X_0, and `correct_output_scale` is a plain multiply (no `1 + s`).
'''),
    ("code", '''
zero = dict(p, **{"prediction_coefs.weight": np.zeros_like(p["prediction_coefs.weight"]),
                  "correction_coefs.weight": np.zeros_like(p["correction_coefs.weight"])})
o_ = np.random.default_rng(0).normal(size=X.shape[1:])                      # a stand-in layer output
P = altup.predict(X, zero, cfg)
Q = altup.correct(P, o_, zero, cfg)
assert np.array_equal(P, X)
assert np.allclose(Q, X + (o_ - X[0])[None], rtol=0, atol=1e-14) and np.allclose(Q[0], o_, rtol=0, atol=1e-14)
print("identity coefficients: P == X, Q_i == X_i + (o - X_0), Q_0 == o")
'''),
    ("md", '''
## Making and collapsing the streams

Stream i > 0 is `altup_projections.{i-1}(E)` rescaled to the RMS of the embedding E:
`Y * rms(E) / sqrt(max(mean(Y^2), 1e-5))`. **Trap:** the target RMS has no eps, and the 1e-5 clamp is on
the mean square, before the sqrt. After the last layer, `collapse_streams` unembeds streams 1..K-1, rescales
them to stream 0's RMS and averages all K.
'''),
    ("code", '''
gs = load_golden("text_altup_streams")
cs = TextConfig.from_dict(gs.meta["config"])
for dt, out, tol in MODES:
    name = np.dtype(dt).name
    S = altup.make_streams(gs.inputs["inputs_embeds"].astype(dt), gs.weights, cs)       # [K, B, T, D]
    check(f"make_streams ({name})", S, getattr(gs, out)["streams"], tol)
    final = gs.inputs["final_streams32" if dt == np.float32 else "final_streams64"].astype(dt)
    check(f"collapse_streams ({name})", altup.collapse_streams(final, gs.weights, cs), getattr(gs, out)["collapsed"], tol)

rms = np.sqrt(np.mean(S ** 2, axis=-1))                                     # [K, B, T]
print("RMS per stream at token 0:", rms[:, 0, 0])
assert np.allclose(rms, rms[0], rtol=1e-12)                                 # every stream has the embedding's RMS
'''),
    exercise('''
Implement `router_modalities`, `predict`, `correct`, `scale_corrected_output`, `make_streams` and
`collapse_streams` in your own `altup.py`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k altup
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["04_laurel"] = [
    ("md", '''
# 04 · LAuReL: a cheap low-rank branch next to attention

LAuReL (Learned Augmented Residual Layer, Menghani et al. 2025, the low-rank variant) replaces a plain
residual `x` by `x + norm(W_right (W_left x))` with rank R = 64 much smaller than D = 2048. In Gemma 3n it
runs on the **normed** active stream n (the attention input), and its output is averaged with the
attention branch: `h = (a + attn + laurel(n)) / sqrt(2)` (chapter 07).

Module: `minig3n/laurel.py` (`laurel(x, p, eps)`). Fixture: `text_laurel`.
'''),
    ("code", SETUP),
    ("code", '''
from minig3n.config import TextConfig
from minig3n.laurel import laurel

g = load_golden("text_laurel")
cfg = TextConfig.from_dict(g.meta["config"])
print({k: v.shape for k, v in g.weights.items()})
for dt, out, tol in MODES:
    check(f"laurel ({np.dtype(dt).name})", laurel(g.inputs["x"].astype(dt), g.weights, cfg.rms_norm_eps),
          getattr(g, out)["out"], tol)
'''),
    ("md", '''
**Trap (numerics doc §0): norms multiply by w, never by 1 + w.** Gemma 2 and 3 stored zero-centred norm
weights and used `1 + w`; Gemma 3n's converter copied the JAX scales unchanged. The most common porting bug:
'''),
    ("code", '''
wrong = dict(g.weights, **{"post_laurel_norm.weight": 1.0 + g.weights["post_laurel_norm.weight"]})
e = rel_err(laurel(g.inputs["x"].astype(np.float64), wrong, cfg.rms_norm_eps), g.out64["out"])
print(f"with (1 + w): rel err {e:.2e}")
assert e > 1e-3
'''),
    ("md", '''
**Experiment: LAuReL is a residual block.** With `linear_right = 0` the branch is `rms_norm(0) = 0`, so
`laurel(x) = x` exactly. And its cost: `2 R D + D` parameters instead of `D^2` for a full-rank map.
'''),
    ("code", '''
x = g.inputs["x"].astype(np.float64)
zero = dict(g.weights, **{"linear_right.weight": np.zeros_like(g.weights["linear_right.weight"])})
assert np.array_equal(laurel(x, zero, cfg.rms_norm_eps), x)
R, D = 64, 2048
print(f"E2B layer: LAuReL {2 * R * D + D:,} parameters vs a D x D map {D * D:,} ({(2 * R * D + D) / D**2:.1%})")
'''),
    exercise('''
Implement `laurel(x, p, eps)` in your own `laurel.py`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k laurel
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["05_attention_kv_sharing"] = [
    ("md", '''
# 05 · Attention: RoPE with two bases, sliding windows, GQA; and KV sharing

Ordinary causal attention with grouped K/V heads, plus Gemma 3n's twists (numerics doc §1.6):

* **Norms instead of a scale**: q and k are RMS-normed per head (`q_norm`, `k_norm`), v by a *weightless*
  RMSNorm, all **before** RoPE; the logit scale is **1.0** (no 1/sqrt(E)); no logit softcap.
* **Two RoPE bases**: sliding layers rotate with base 1e4, full layers with 1e6. Rotate-half on contiguous
  halves (pairs i and i + E/2), not interleaved pairs.
* **Two masks**: full layers see every earlier key; sliding layers the last `sliding_window` keys including
  the query itself (`q - W < k <= q`).
* **GQA**: query head h reads K/V head `h // (N / G)`.
* **KV sharing**: the last `num_kv_shared_layers` layers compute no K/V; each reuses the K/V of the last
  earlier layer of its type, from the same forward pass.

Modules: `minig3n/attention.py`, `minig3n/kv_share.py`. Fixtures: `text_attention_sliding`,
`text_attention_full`.
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import attention, kv_share
from minig3n.config import SLIDING, TextConfig, e2b_config


def show(mask, title):
    """ASCII picture of a [T, S] boolean mask: '#' = the query (row) reads the key (column)."""
    print(title)
    for row in mask:
        print("   " + " ".join("#" if m else "." for m in row))


T = 8
show(attention.attention_mask(np.arange(T), np.arange(T))[0], "full: k <= q")
show(attention.attention_mask(np.arange(T), np.arange(T), sliding_window=3)[0], "sliding, window 3: q - 3 < k <= q")
show(attention.attention_mask(np.arange(T), np.arange(T), np.array([[0, 0, 1, 1, 1, 1, 1, 1]]), 3)[0],
     "sliding, window 3, two left-pad tokens (pad queries see nothing -> output 0)")
sl = attention.attention_mask(np.arange(T), np.arange(T), sliding_window=3)[0]
assert sl.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]      # exactly W keys, the query included
'''),
    ("md", '''
## RoPE

`inv_i = 1 / base^(2i/E)` (a float32 buffer), angle `pos * inv_i`, and
`out[i] = x[i] cos - x[i + E/2] sin`, `out[i + E/2] = x[i + E/2] cos + x[i] sin`. A rotation keeps the
norm, and the dot product of a rotated q and k depends only on the **distance** of their positions.
'''),
    ("code", '''
E = 16
rng = np.random.default_rng(0)
q, k = rng.normal(size=(1, 1, 1, E)), rng.normal(size=(1, 1, 1, E))
inv = attention.rope_inv_freq(10_000.0, E)
print("inv_freq (base 1e4):", inv[:4], "...")


def rot(x, pos):
    cos, sin = attention.rope_cos_sin(np.array([[pos]]), inv, np.float64)
    return attention.apply_rope(x, cos, sin)


assert np.isclose(np.linalg.norm(rot(q, 37)), np.linalg.norm(q))
d1, d2 = np.sum(rot(q, 5) * rot(k, 2)), np.sum(rot(q, 105) * rot(k, 102))
print(f"q.k at positions (5, 2): {d1:.12f}   at (105, 102): {d2:.12f}")
assert abs(d1 - d2) < 1e-12
'''),
    ("md", '''
**Trap (numerics doc §0): RoPE angles are float32 products.** The reference computes
`float32(pos) * inv_freq_f32` in float32 and only then takes cos/sin. A float64 angle drifts from it by
about pos x 6e-8 rad, already visible at position 500:
'''),
    ("code", '''
inv_full = attention.rope_inv_freq(1_000_000.0, 256)
pos = 500
a32 = (np.float32(pos) * inv_full).astype(np.float64)
a64 = pos * inv_full.astype(np.float64)
print(f"max |angle32 - angle64| at pos {pos}: {np.abs(a32 - a64).max():.1e} rad")
assert np.abs(a32 - a64).max() > 1e-6
'''),
    ("md", '''
## One attention block against the reference

The fixtures hold 2 sequences of 14 tokens, window 8 (so the sliding mask slides), and row 1 is
left-padded by 4 tokens. We build the mask and the RoPE tables of the layer's type, then run
`self_attention`.
'''),
    ("code", '''
def run_attention(g, dt):
    cfg, li = TextConfig.from_dict(g.meta["config"]), g.meta["layer_idx"]
    x = g.inputs["x"].astype(dt)                                      # [B, T, D]
    real = g.inputs["attention_mask"].astype(np.int64)                # [B, T] 1 = real token
    pos = g.inputs["position_ids"].astype(np.int64)                   # [B, T]
    T = x.shape[1]
    mask = attention.attention_mask(np.arange(T), np.arange(T), real, attention.layer_sliding_window(cfg, li))
    base = cfg.rope_local_base_freq if cfg.layer_types[li] == SLIDING else cfg.rope_theta
    cos, sin = attention.rope_cos_sin(pos, attention.rope_inv_freq(base, cfg.head_dim), dt)
    out, _ = attention.self_attention(x, g.weights, cfg, cfg.layer_types[li], cos, sin, mask)
    return out, mask, cfg


for name in ("text_attention_sliding", "text_attention_full"):
    g = load_golden(name)
    for dt, out, tol in MODES:
        got, mask, cfg = run_attention(g, dt)
        check(f"{name} ({np.dtype(dt).name})", got, getattr(g, out)["out"], tol)
show(run_attention(load_golden("text_attention_sliding"), np.float64)[1][1], "the sliding fixture's mask, row 1")
'''),
    ("md", '''
**GQA**: N query heads share G K/V heads; head h reads K/V head `h // (N/G)` (the reference's `repeat_kv`
interleaving). **Trap: the scale is 1.0.** The q/k norms already fix the logits' size; a habitual
`1/sqrt(E)` is wrong:
'''),
    ("code", '''
g = load_golden("text_attention_sliding")
cfg, li = TextConfig.from_dict(g.meta["config"]), g.meta["layer_idx"]
N, G = cfg.num_attention_heads, cfg.num_key_value_heads
print("query head -> K/V head:", [h // (N // G) for h in range(N)])

from minig3n.ops import linear
x = g.inputs["x"].astype(np.float64)
T = x.shape[1]
mask = attention.attention_mask(np.arange(T), np.arange(T), g.inputs["attention_mask"].astype(np.int64),
                                cfg.sliding_window)
cos, sin = attention.rope_cos_sin(g.inputs["position_ids"].astype(np.int64),
                                  attention.rope_inv_freq(cfg.rope_local_base_freq, cfg.head_dim), np.float64)
q = attention.query_states(x, g.weights, cfg, cos, sin)
k, v = attention.key_value_states(x, g.weights, cfg, cos, sin)
scaled = linear(attention.attend(q / np.sqrt(cfg.head_dim), k, v, mask), g.weights["o_proj.weight"])
e = rel_err(scaled, g.out64["out"])
print(f"with a 1/sqrt(E) scale: rel err {e:.2e}")
assert e > 1e-3
'''),
    ("md", '''
## KV sharing

`kv_sharing_modes` marks each layer: None (ordinary), "store" (the producer of its type) or "reuse" (a
consumer). For E2B and E4B the consumers are layers 20.. and the producers layer 18 (sliding) and 19 (full).
**Trap (numerics doc §6.1):** transformers before 4.56 used the consumers' own K/V weights when no cache
was passed; in 5.24 sharing always happens and those weights are never read (our fixtures, written by
5.24, do not even store them).
'''),
    ("code", '''
e2b = e2b_config().text
modes = kv_share.kv_sharing_modes(e2b)
print("E2B layers 16..23:", modes[16:24])
assert kv_share.kv_producer(e2b, 20) == 18 and kv_share.kv_producer(e2b, 24) == 19

tiny = TextConfig.from_dict(load_golden("text_model_causal").meta["config"])
print("fixture config:", ["F" if lt == "full_attention" else "S" for lt in tiny.layer_types],
      kv_share.kv_sharing_modes(tiny))
stored = [n for n in load_golden("text_model_causal").weights if n.startswith("model.layers.6.self_attn")]
print("layer 6 (a consumer) stores only:", [n.split("self_attn.")[1] for n in stored])
assert not any("k_proj" in n or "v_proj" in n for n in stored)
'''),
    exercise('''
Implement in your own `attention.py`: `rope_inv_freq`, `rope_cos_sin`, `apply_rope`, `attention_mask`,
`layer_sliding_window` and `self_attention` (with your own `query_states`, `key_value_states`, `attend`
helpers); and in `kv_share.py`: `kv_sharing_modes`, `kv_producer`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k "attention or rope or mask"
    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k kv_sharing
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["06_mlp_sparsity"] = [
    ("md", '''
# 06 · The MLP and Gaussian top-k activation sparsity

A GeGLU feed-forward, `down(gelu_tanh(gate(x)) * up(x))`. On the first layers (sparsity s = 0.95 on layers
0..9 of E2B/E4B) the gate pre-activation is first **shifted down by `mean + std * Phi^-1(s)`** (statistics
over the I axis, per token, population std) and ReLU'd. If the gate values were Gaussian this keeps the top
5 % of them, with no sort (numerics doc §1.7).

Module: `minig3n/mlp.py` (`std_multiplier`, `gaussian_topk`, `mlp`). Fixtures: `text_mlp_sparse` (layer 0,
s = 0.95), `text_mlp_dense` (a layer with s = 0). Each layer may have its own intermediate size I.
'''),
    ("code", SETUP),
    ("code", '''
from statistics import NormalDist

from minig3n import mlp
from minig3n.config import TextConfig

z = mlp.std_multiplier(0.95)
print(f"Phi^-1(0.95): reference float32 {float(z)!r}, float64 (statistics.NormalDist) {NormalDist().inv_cdf(0.95)!r}")
assert float(z) == 1.6448535919189453        # numerics doc section 0: the float32 value torch computes

for name in ("text_mlp_sparse", "text_mlp_dense"):
    g = load_golden(name)
    cfg, li = TextConfig.from_dict(g.meta["config"]), g.meta["layer_idx"]
    s = cfg.activation_sparsity_pattern[li]
    print(f"{name}: layer {li}, I = {cfg.intermediate_size[li]}, sparsity {s}")
    for dt, out, tol in MODES:
        check(f"  mlp ({np.dtype(dt).name})", mlp.mlp(g.inputs["x"].astype(dt), g.weights, s), getattr(g, out)["out"], tol)
'''),
    ("md", '''
**Experiment: the fraction of zeros.** On Gaussian gate values the cut keeps about 5 %. On the fixture's
tiny layer (I = 48) the fraction per token is rougher, but near 95 % too.
'''),
    ("code", '''
rng = np.random.default_rng(0)
gate = rng.normal(size=(1, 8, 16384))
frac = np.mean(mlp.gaussian_topk(gate, 0.95) == 0)
print(f"Gaussian gate, I = 16384: {frac:.2%} zeros")
assert abs(frac - 0.95) < 0.01

from minig3n.ops import gelu_tanh, linear
g = load_golden("text_mlp_sparse")
gate = linear(g.inputs["x"].astype(np.float64), g.weights["gate_proj.weight"])      # [B, T, I]
kept = mlp.gaussian_topk(gate, 0.95)
print("fixture, zeros per token:", np.round(np.mean(kept == 0, axis=-1)[0], 2))
'''),
    ("md", '''
**Trap: GELU of the shifted value, not a mask on GELU.** A natural reading of "top-k sparsity" is
`gelu(gate)` with the small entries masked. The reference applies GELU to `relu(gate - cutoff)`:
'''),
    ("code", '''
up = linear(g.inputs["x"].astype(np.float64), g.weights["up_proj.weight"])
masked = np.where(kept > 0, gelu_tanh(gate), 0.0)                      # the tempting, wrong version
wrong = linear(masked * up, g.weights["down_proj.weight"])
e = rel_err(wrong, g.out64["out"])
print(f"mask on gelu(gate) instead of gelu(relu(gate - cutoff)): rel err {e:.2e}")
assert e > 1e-2
'''),
    exercise('''
Implement `std_multiplier`, `gaussian_topk` and `mlp` in your own `mlp.py` (`std_multiplier` must give
torch's float32 value 1.6448535919189453 for 0.95). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k "mlp or std_multiplier"
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["07_decoder_end_to_end"] = [
    ("md", '''
# 07 · The decoder layer, end-to-end logits, trace and compare

One decoder layer (numerics doc §1.5), streams X [K, B, T, D] in, X' out:

1. `P = altup.predict(X)`; `a = P_0`; `n = input_layernorm(a)`
2. `lau = laurel(n)`; `att = post_attention_layernorm(attention(n))`
3. `h = (a + att + lau) / sqrt(2)`
4. `o = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))`
5. `Q = altup.correct(P, o)`
6. per-layer input: `e = post_per_layer_input_norm(per_layer_projection(gelu(per_layer_input_gate(Q_0 * s)) * ple_l))`
7. `X'_0 = Q_0` (**no e, unscaled**), `X'_i = Q_i + e` for i >= 1.

The model: `embed_tokens(ids) * sqrt(D)` -> PLE -> `make_streams` -> L layers -> `collapse_streams` ->
`norm` -> tied LM head -> softcap `30 tanh(x / 30)`.

Module: `minig3n/decoder.py`. Fixtures: `text_decoder_layer` (layer 3), `text_model_causal` (7 layers,
window 8, KV sharing of both types, left padding, ids beyond the PLE table, hooks on every module).
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import attention, decoder
from minig3n.config import SLIDING, TextConfig

g = load_golden("text_decoder_layer")
cfg, li = TextConfig.from_dict(g.meta["config"]), g.meta["layer_idx"]
real = g.inputs["attention_mask"].astype(np.int64)
T = real.shape[1]
mask = attention.attention_mask(np.arange(T), np.arange(T), real, attention.layer_sliding_window(cfg, li))
base = cfg.rope_local_base_freq if cfg.layer_types[li] == SLIDING else cfg.rope_theta
pos = np.broadcast_to(np.arange(T), real.shape)
for dt, out, tol in MODES:
    cos, sin = attention.rope_cos_sin(pos, attention.rope_inv_freq(base, cfg.head_dim), dt)
    X1, _ = decoder.decoder_layer(g.inputs["streams"].astype(dt), g.inputs["per_layer_input"].astype(dt),
                                  g.weights, cfg, li, cos, sin, mask)
    check(f"decoder_layer {li} ({np.dtype(dt).name})", X1, getattr(g, out)["out"], tol)
'''),
    ("md", '''
## The whole model

The fixture's weights (HF names, `Gemma3nForCausalLM` layout) go into a temporary checkpoint directory,
which `load_text_model` opens like any other. Tolerance on logits: 1e-4 in float32 (identical argmax), 1e-10
in float64.
'''),
    ("code", '''
import json
import tempfile

from minig3n.checkpoint import save_safetensors

gm = load_golden("text_model_causal")
tmp = Path(tempfile.mkdtemp(prefix="walkthrough_"))
save_safetensors(tmp / "model.safetensors", {k: np.asarray(v, np.float32) for k, v in gm.weights.items()})
(tmp / "config.json").write_text(json.dumps({**gm.meta["config"], "model_type": "gemma3n_text"}))

ids = gm.inputs["input_ids"].astype(np.int64)
real = gm.inputs["attention_mask"].astype(np.int64)
for dt, out, tol in ((np.float32, "out32", 1e-4), (np.float64, "out64", 1e-10)):
    model = decoder.load_text_model(tmp, dt)
    logits, _ = decoder.forward(model, ids, attention_mask=real)
    ref = getattr(gm, out)["logits"]
    check(f"logits ({np.dtype(dt).name})", logits, ref, tol)
    assert (logits.argmax(-1) == ref.argmax(-1)).all()
print("max |logit|", float(np.abs(logits).max()), "< 30: the softcap bounds them")
'''),
    ("md", '''
**Trap: stream 0 never receives the per-layer input.** Adding `e` to all K streams (or to stream 0 only)
is an easy slip; the reference adds it to streams 1..K-1 only, and feeds the gate with the *scaled* copy
`Q_0 * correct_output_scale`, which goes nowhere else. The layer check above catches either slip.

## Trace and compare: finding the first module where two implementations part

`forward(..., trace={})` records every module's output under the reference's module name (a forward hook
on the reference gives the same array). The fixture holds the lifted float64 reference's hooks:
'''),
    ("code", '''
trace = {}
decoder.forward(decoder.load_text_model(tmp, np.float64), ids, attention_mask=real, trace=trace)
want = {k[len("trace."):]: v for k, v in gm.out64.items() if k.startswith("trace.")}
errs = {k: rel_err(trace[k], want[k]) for k in want}
worst = max(errs, key=errs.get)
print(f"{len(errs)} traced modules; first names: {list(trace)[:3]}")
print(f"worst: {worst} rel err {errs[worst]:.2e}")
assert errs[worst] <= 1e-10
'''),
    ("md", '''
To check *your* port, dump the same names from it and run `minig3n compare ref.safetensors yours.safetensors`
(`minig3n trace` writes minig3n's side). Here a "port" with one weight off by 0.1 % in layer 3's
`down_proj`: everything before layer 3's MLP agrees, and compare names the culprit.
'''),
    ("code", '''
import io

from minig3n.compare import compare_files
from minig3n.trace import trace_text, write_trace

seq = [2, 17, 5, 260, 9, 30, 31, 32, 33, 40, 41]
bad = dict(gm.weights)
bad["model.layers.3.mlp.down_proj.weight"] = bad["model.layers.3.mlp.down_proj.weight"] * np.float32(1.001)
port = tmp / "port"
port.mkdir(exist_ok=True)
save_safetensors(port / "model.safetensors", bad)
(port / "config.json").write_text((tmp / "config.json").read_text())

for d, name in ((tmp, "ours"), (port, "port")):
    write_trace(tmp / f"{name}.safetensors", trace_text(decoder.load_text_model(d, np.float64), seq))
report = io.StringIO()
code = compare_files(tmp / "ours.safetensors", tmp / "port.safetensors", rtol=1e-10, out=report)
print(report.getvalue().strip().splitlines()[-1])
assert code == 1 and report.getvalue().strip().endswith("model.layers.3.mlp")

import shutil
shutil.rmtree(tmp)                                 # the temporary checkpoints and traces
'''),
    exercise('''
Implement `per_layer_input_branch`, `decoder_layer` and `forward` in your own `decoder.py` (import the
pieces from minig3n or from your own modules, with absolute imports). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k decoder_layer
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_text_model.py

(`test_text_model.py` also grades `load_text_model` and, through `kv_cache.py`, the cache of chapter 08.)
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["08_generation"] = [
    ("md", '''
# 08 · Generation: tokenizer, chat template, KV cache, sampling

From a prompt string to streamed text:

1. **Tokenizer** (`minig3n/tokenizer.py`): Gemma's sentencepiece BPE with byte fallback; special-token
   strings written in the text (`<start_of_turn>`) become their ids; `<bos>` first.
2. **Chat template** (`minig3n/chat.py`): turns of `<start_of_turn>ROLE\\n ... <end_of_turn>\\n`, the
   system message folded into the first user turn, an open `<start_of_turn>model\\n` at the end.
3. **Prefill and decode** (`minig3n/generate.py`, `minig3n/kv_cache.py`): one forward pass over the prompt
   fills a `KVCache`; then one token per call. Full layers keep every key, sliding layers the last
   `window - 1`, KV-shared layers nothing. The cache is an immutable value: `forward` returns a new one.
4. **Sampling** (`minig3n/sampling.py`): greedy, or temperature -> top-k -> top-p -> one seeded draw.

Fixtures: `generation_tokenizer`, `generation_chat`, `generation_greedy` (the reference's
`generate(do_sample=False)` tokens on the tiny checkpoint).
'''),
    ("code", SETUP),
    ("code", '''
from minig3n.tokenizer import Tokenizer

TINY = ROOT / "weights" / "tiny-random-gemma3n"
tok = Tokenizer.from_dir(TINY)
gt = load_golden("generation_tokenizer").meta
for text, want in zip(gt["strings"], gt["ids"]):
    assert tok.encode(text) == want
print([tok.id_to_piece(i) for i in tok.encode(gt["strings"][1])][:10], "...")
print("encode matches the reference on", len(gt["strings"]), "strings")
for run in gt["byte_runs"]:              # byte-fallback pieces decode as UTF-8 runs
    assert tok.decode(run["ids"]) == run["text"]
'''),
    ("code", '''
from minig3n.chat import encode_chat, render_chat

gc = load_golden("generation_chat").meta
for conv, prompt, ids in zip(gc["conversations"], gc["prompts"], gc["ids"]):
    assert render_chat(conv) == prompt
    assert encode_chat(tok, conv) == ids
print(repr(render_chat(gc["conversations"][1])))
'''),
    ("md", '''
**Trap: the system message has no turn of its own** (it prefixes the first user turn and is *not*
stripped), user text is stripped, and the assistant's role is written `model`.

## Prefill and decode, by hand

The same loop `Generator.generate` runs, written out: greedy tokens must equal the reference's, token for
token. **Trap: multimodal ids.** In a multimodal checkpoint the ids from the vision vocabulary offset up
(`<image_soft_token>`, `<end_of_audio>`, ...) are not looked up in `embed_tokens`: the reference embeds them
with the hard path of `embed_vision` / `embed_audio` (chapter 09). A random model does generate such ids, so
the loop passes `inputs_embeds=gen.hard_token_embeds(ids)` (None when there are none); without it the
generated tokens diverge from the reference's at the first such id.
'''),
    ("code", '''
from minig3n import decoder, sampling
from minig3n.generate import Generator
from minig3n.kv_cache import KVCache

gg = load_golden("generation_greedy").meta
gen = Generator.load(TINY, "float32")          # model + tokenizer + stop ids (<eos>, <end_of_turn>, config eos)
model, cfg = gen.model, gen.model.cfg
print("stop ids:", sorted(gen.stop_ids), "| multimodal ids start at", model.ckpt.config.vision.vocab_offset)

for prompt_ids, want in zip(gg["tiny_prompt_ids"][:2], gg["tiny_tokens"][:2]):
    cache = KVCache.empty(cfg, 1, np.float32)
    step_ids = np.asarray([prompt_ids])                                  # prefill: the whole prompt
    out = []
    while len(out) < gg["max_new_tokens"]:
        logits, cache = decoder.forward(model, step_ids, inputs_embeds=gen.hard_token_embeds(step_ids),
                                        cache=cache, logits_to_keep=1)
        token = sampling.greedy(logits[0, -1])
        out.append(token)
        if token in gen.stop_ids:
            break
        step_ids = np.asarray([[token]])                                 # decode: one token per call
    assert out == want, (out, want)
    print(f"{len(prompt_ids)} prompt tokens -> {len(out)} greedy tokens, identical to the reference;",
          repr(tok.decode(out[:12])), "...")
'''),
    ("code", '''
# What the cache holds now: full layers every position, sliding layers the last window - 1, shared layers nothing.
print(f"cache length {cache.length}, window {cfg.sliding_window}, {cache.nbytes} bytes")
for i, lt in enumerate(cfg.layer_types):
    k = cache.keys[i]
    print(f"  layer {i} {lt.split('_')[0]:7s}", "shared: nothing" if k is None else f"keys {k.shape[1]} (positions {cache.starts[i]}..)")
    if k is not None:
        assert k.shape[1] == (cache.length if lt == "full_attention" else min(cache.length, cfg.sliding_window - 1))

# The cache is an optimisation only: the last step's logits equal a full recomputation's (float64: 1e-10).
m64 = decoder.load_text_model(TINY, np.float64)
seq = np.asarray([gg["tiny_prompt_ids"][1] + out[:-1]])
full, _ = decoder.forward(m64, seq, logits_to_keep=1)
c, step = KVCache.empty(cfg, 1, np.float64), None
c_logits, c = decoder.forward(m64, seq[:, :-5], cache=c)
for t_ in range(seq.shape[1] - 5, seq.shape[1]):
    step, c = decoder.forward(m64, seq[:, t_:t_ + 1], cache=c)
check("cached vs full recompute, last position", step[0, -1], full[0, -1], 1e-10)
'''),
    ("md", '''
## Sampling, derived by hand

Logits [2, 1, 0, -1]. Softmax: [0.644, 0.237, 0.087, 0.032]. **top-k = 2** keeps the two largest and
renormalises: [e^2, e^1] / (e^2 + e^1) = [0.731, 0.269, 0, 0]. **top-p = 0.7** keeps a token while the
probability ranked *before* it is still < 0.7: token 0 (0) and token 1 (0.644) stay, token 2 (0.881) goes:
the same two tokens.
'''),
    ("code", '''
from minig3n.sampling import SamplingParams, probabilities, sample_next

logits = np.array([2.0, 1.0, 0.0, -1.0])
want = np.array([np.e ** 2, np.e, 0, 0]) / (np.e ** 2 + np.e)
for params in (SamplingParams(1.0, top_k=2), SamplingParams(1.0, top_p=0.7)):
    got = probabilities(logits, params)
    print(params, np.round(got, 3))
    assert np.allclose(got, want, rtol=1e-12, atol=0)
draws = [sample_next(logits, SamplingParams(1.0, seed=s)) for s in range(5)]
assert draws == [sample_next(logits, SamplingParams(1.0, seed=s)) for s in range(5)]   # seeded: reproducible
print("seeded draws:", draws)
'''),
    ("md", '''
## The Python API, streaming

`minig3n.generate.generate(model_dir, prompt, ...)` yields `(token, text piece)` as it goes (the
command line: `minig3n generate --model DIR --prompt ...`). With the trained `weights/nano-gemma3n`
(Shakespeare) the text is readable; the random tiny checkpoint babbles.
'''),
    ("code", '''
from minig3n.generate import generate

NANO = ROOT / "weights" / "nano-gemma3n"
model_dir = NANO if (NANO / "config.json").exists() and (NANO / "model.safetensors").exists() else TINY
prompt = "ROMEO:" if model_dir == NANO else "Per-layer embeddings"
pieces = list(generate(model_dir, prompt, max_new_tokens=24))
print(f"[{model_dir.name}] {prompt}" + "".join(piece for _, piece in pieces))
again = list(generate(model_dir, prompt, max_new_tokens=24))
assert again == pieces                                                   # greedy: deterministic
'''),
    exercise('''
Re-implement, one at a time: `sampling.probabilities` / `sample_next` (and `warp`), `chat.render_chat` /
`encode_chat` / `expand_media_placeholders`, `generate.StreamDecoder`, `kv_cache.KVCache`
(`empty`, `past`, `advanced`), and if you are brave the `tokenizer.Tokenizer`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m generation tests/test_generation_sampling.py
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_chat.py tests/test_tokenizer.py tests/test_generation_stream.py
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_text_model.py -k "cache or incremental or chunked"
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_generation_greedy.py
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["09_audio"] = [
    ("md", '''
# 09 · Audio: log-mel features and the USM encoder

**Features** (`minig3n/features.py`, numerics doc §2.1): 16 kHz samples, windows of 512 every 160 samples
(10 ms), HTK pre-emphasis *inside each window*, periodic Hann, FFT of 1024 points, **magnitude** (not
power), 128 HTK mel filters 125-7600 Hz, `ln(max(mel, 1e-5))`. A batch is zero-padded to a multiple of 128
samples; a frame is valid iff its **first** sample is real.

**USM encoder** (`minig3n/usm.py`, §2.2-2.6): two stride-2 convs with a *cumulative* group norm (time /4,
mel 128 -> 32), 12 Conformer blocks (half-step FFW, local attention over the 12 previous frames + itself
with relative positions and a tanh cap 50, a light causal conv, half-step FFW, norm), then every 4th frame:
one vector per 160 ms.

**Embedder** (`minig3n/embedder.py`, §2.7): `RMSNorm_noW(RMSNorm_soft(x) W^T)` into the text width.

Fixtures: `audio_features`, `audio_encoder_tiny`, `audio_embedder`.
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import features

g = load_golden("audio_features")
waves = [g.inputs[f"batch.wave{i}"] for i in range(3)]
feats, valid = features.extract_features(waves)
print("samples", [len(w) for w in waves], "-> features", feats.shape, "mask", valid.shape)
check("log-mel features (float32)", feats, g.out32["batch.features"], 1e-5)
assert np.array_equal(valid, g.out32["batch.mask"].astype(bool))

# Frame count and mask, by hand: padded to 16128 samples (a multiple of 128); (16128 - 513) // 160 + 1 = 98
# frames; wave 0 has 1000 samples, so frames 0..6 start on a real sample (160 * 6 = 960 < 1000).
assert feats.shape[1] == (16128 - 513) // 160 + 1 == 98
assert valid[0].sum() == 7
'''),
    ("code", '''
w = features.hann_window()
print("Hann: periodic, w[0] =", w[0], " w[256] =", w[256], " w[511] =", round(float(w[511]), 6))
assert w[0] == 0 and w[256] == 1 and w[511] > 0              # a symmetric window would end in 0
silence, _ = features.extract_features([np.zeros(2000, np.float32)])
print("silence ->", silence[0, 0, 0], "= ln(1e-5) everywhere")
assert np.allclose(silence, np.log(np.float32(1e-5)))
'''),
    ("md", '''
**Trap: the mask flips meaning.** `extract_features` returns True = *valid* frame (the feature
extractor's `input_features_mask`); inside the encoder the mask is True = *padded* (`audio_mel_mask`).
`Gemma3nModel` inverts it. The fixture below feeds the encoder its own convention.
'''),
    ("code", '''
from minig3n import usm
from minig3n.config import AudioConfig

ga = load_golden("audio_encoder_tiny")
acfg = AudioConfig(**ga.meta["config"])
print("tiny encoder:", ga.meta["config"], "| clips of", ga.meta["lengths"], "samples")
for dt, out, tol in MODES:
    o = getattr(ga, out)
    name = "subsample_conv_projection.conv_0.norm"
    cgn = usm.cumulative_group_norm(o[name + ":in"], ga.weights[name + ".weight"].astype(dt),
                                    acfg.sscp_conv_group_norm_eps)
    check(f"cumulative group norm ({np.dtype(dt).name})", cgn, o[name], tol)
    enc, enc_mask = usm.audio_encoder(ga.inputs["features"].astype(dt), ga.inputs["mask_invalid"].astype(bool),
                                      ga.weights, acfg)
    check(f"audio encoder ({np.dtype(dt).name})", enc, o["out"], tol)
    assert np.array_equal(enc_mask, o["out_mask"].astype(bool))
print("frames:", ga.inputs["features"].shape[1], "->", enc.shape[1], "| padded outputs are 0:",
      bool(np.all(enc[enc_mask] == 0)))
'''),
    ("md", '''
**Trap: the cumulative group norm's variance.** Each past step's squares are taken around *that step's*
running mean, not the current one (so it is not the textbook running variance), with eps 1e-3 and a
float64 cumsum (torch's CPU cumsum of float32 accumulates in float64). The textbook version differs:
'''),
    ("code", '''
x = ga.out64["subsample_conv_projection.conv_0.norm:in"]           # [B, T, F, C]
wgt = ga.weights["subsample_conv_projection.conv_0.norm.weight"].astype(np.float64)
n = (np.arange(1, x.shape[1] + 1) * x.shape[2] * x.shape[3])[None, :, None, None]
mu = np.cumsum(x.sum(axis=(2, 3), keepdims=True), axis=1) / n
var = np.cumsum((x ** 2).sum(axis=(2, 3), keepdims=True), axis=1) / n - mu ** 2
textbook = (x - mu) / np.sqrt(var + 1e-3) * wgt
e = rel_err(textbook, ga.out64["subsample_conv_projection.conv_0.norm"])
print(f"textbook running variance: rel err {e:.2e}")
assert e > 1e-6

# How many audio tokens: 30 s = 2997 mel frames -> ceil(/2) -> ceil(/2) -> every 4th.
frames = 2997
for _ in range(2):
    frames = -(-frames // 2)
print("30 s of audio ->", -(-frames // 4), "audio tokens")
assert -(-frames // 4) == 188
'''),
    ("code", '''
from minig3n import embedder

ge = load_golden("audio_embedder")
for dt, out, tol in MODES:
    p = {k: v.astype(dt) for k, v in ge.weights.items()}
    check(f"embed_soft ({np.dtype(dt).name})", embedder.embed_soft(ge.inputs["soft"].astype(dt), p, ge.meta["eps"]),
          getattr(ge, out)["soft"], tol)
    ids = ge.inputs["ids"].astype(np.int64) - ge.meta["vocab_offset"]
    check(f"embed_hard ({np.dtype(dt).name})", embedder.embed_hard(ids, p, ge.meta["eps"]), getattr(ge, out)["hard"], tol)
'''),
    exercise('''
Implement `features.extract_features` (with your own `mel_filterbank`, `hann_window`, `log_mel`), the
encoder pieces of `usm.py` (`cumulative_group_norm`, `subsample_conv_projection`, `feed_forward`,
`local_attention`, `conformer_attention`, `light_conv1d`, `conformer_block`, `audio_encoder`, `q_scale`,
`inv_timescales`) and `embedder.embed_soft` / `embed_hard`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_audio_features.py
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_audio_usm.py -k "group_norm or subsample"
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_audio_usm.py tests/test_audio_embedder.py
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["10_matformer"] = [
    ("md", '''
# 10 · MatFormer: smaller models cut out of E4B

E4B is a MatFormer (Devvrit et al. 2023): during training, sub-networks that use only a **prefix** of each
FFN's hidden units were optimised together with the full network, so a prefix is itself a trained network.
Keeping units 0..d-1 of a layer's MLP means `gate_proj[:d]`, `up_proj[:d]`, `down_proj[:, :d]`. E2B is E4B
with 8192-wide FFNs and layers 20-24 left out; "mix-n-match" picks a width per layer and skips layers.

**Trap: KV sharing constrains skipping.** A layer whose K/V a kept shared layer reuses (E4B: 18 and 19)
cannot be skipped. **Trap: PLE is per layer**: skipping layer l removes its P columns of the PLE table and
P rows of `per_layer_model_projection` (chapter 02's layer-major layout).

Module: `minig3n/matformer.py`. Expected numbers: Google's MatFormer Lab notebook.
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import matformer
from minig3n.config import e2b_config, e4b_config

table = matformer.read_published()
for row in table[:4]:
    print(f"{row.name:34s} {row.effective_params_b:5.2f} B  MMLU {row.mmlu:4.1f} %  skip {list(row.skip_layers)}")
print("...", len(table), "rows")

row = matformer.find_published("official E2B")
e2b_cut = matformer.slice_config(e4b_config(), matformer.SliceSpec.from_published(row))
c = matformer.count_config(e2b_cut)
print(f"E4B cut by the official E2B row: total {c.total:,}  text {c.text:,}  effective {c.effective:,}")
# What Google's notebook prints for that row (tests/test_matformer.py holds the same numbers):
assert (c.total, c.text, c.effective) == (5_976_833_408, 4_456_156_768, 1_905_495_648)
assert e2b_cut.text.intermediate_size == e2b_config().text.intermediate_size
assert e2b_cut.text.layer_types == e2b_config().text.layer_types
print(f"text = effective {c.effective / 1e9:.2f} B + token embedding {c.token_embedding / 1e9:.2f} B "
      f"+ per-layer embeddings {c.per_layer_embedding / 1e9:.2f} B")
assert c.text == c.effective + c.token_embedding + c.per_layer_embedding
'''),
    ("md", '''
**Experiment: a prefix of the FFN is the FFN with the other units switched off.** Cutting the weights
to the first d units gives exactly what the full MLP gives when `down_proj`'s columns beyond d are zero.
'''),
    ("code", '''
from minig3n.mlp import mlp

g = load_golden("text_mlp_dense")
x, p = g.inputs["x"].astype(np.float64), {k: v.astype(np.float64) for k, v in g.weights.items()}
I = p["gate_proj.weight"].shape[0]
d = I // 2
cut = {"gate_proj.weight": p["gate_proj.weight"][:d], "up_proj.weight": p["up_proj.weight"][:d],
       "down_proj.weight": p["down_proj.weight"][:, :d]}
off = dict(p, **{"down_proj.weight": np.concatenate([p["down_proj.weight"][:, :d], np.zeros_like(p["down_proj.weight"][:, d:])], 1)})
check(f"prefix {d} of {I} units vs units >= {d} switched off", mlp(x, cut), mlp(x, off), 1e-13)
print(f"and it differs from the full width: rel err {rel_err(mlp(x, cut), mlp(x, p)):.2e}")
'''),
    ("code", '''
import tempfile

from minig3n import decoder

TINY = ROOT / "weights" / "tiny-random-gemma3n"
from minig3n.config import Gemma3nConfig
print("tiny checkpoint's K/V producers:", matformer.kv_producers(Gemma3nConfig.from_file(TINY / "config.json").text))
spec = matformer.SliceSpec([100, 160, 64, 64, 192, 50, 16, 112], [1, 7])   # widths of the kept layers; skip 1 and 7
with tempfile.TemporaryDirectory() as tmp:
    out = matformer.slice_checkpoint(TINY, Path(tmp) / "cut", spec)
    before, after = matformer.count_checkpoint(TINY), matformer.count_checkpoint(out)
    print(f"text parameters {before.text:,} -> {after.text:,}; audio/vision untouched: {after.audio == before.audio}")
    ids = np.array([[2, 10, 20, 30, 40, 50, 60, 70]])
    cut_logits, _ = decoder.forward(decoder.load_text_model(out), ids)
    full_logits, _ = decoder.forward(decoder.load_text_model(TINY), ids)
    print("sliced model runs; logits differ from the full model's by", float(np.abs(cut_logits - full_logits).max()))
    try:
        matformer.slice_checkpoint(TINY, Path(tmp) / "bad", matformer.SliceSpec(None, [5]))
        raise AssertionError("skipping a K/V producer must be refused")
    except Exception as e:
        print("skip layer 5:", e)
        assert "cannot be skipped" in str(e)
'''),
    exercise('''
Implement `slice_config` (with your own `plan_text_slice`), `count_config` and `slice_checkpoint` in your
own `matformer.py`; `read_published` / `find_published` if you like parsing. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m matformer
'''),
]

# ---------------------------------------------------------------------------------------------------------
# Vision and multimodal.
LATE = {}

LATE["11_vision"] = [
    ("md", '''
# 11 · Vision: image preprocessing and MobileNetV5

**Preprocessing** (`minig3n/image.py`, numerics doc §3.1): RGB, resize to exactly 768 x 768 with PIL's
BILINEAR (aspect ratio ignored, no crop), times 1/255, **no mean/std normalisation**.

**MobileNetV5** (`minig3n/mobilenetv5.py`, §3.2-3.7): a conv stem, then four stages of *edge residual*,
*universal inverted residual* and *mobile multi-query attention* blocks, each described by a short timm
block string; every conv followed by an RMSNorm over channels (`x * w`) and, where stated, tanh-GELU. The
multi-scale fusion adapter (MSFA) fuses the last two stages into 2048 x 16 x 16 = **256 image tokens**.

Fixtures: `vision_image` (the reference's PIL backend), `vision_encoder` (a scaled-down custom spec with
every block kind, timm 1.0.31).
'''),
    ("code", SETUP),
    ("md", '''
**Trap: TensorFlow "SAME" padding.** A stride-2 conv on an even input pads **more at the bottom/right**:
`total = max((ceil(n/s) - 1) s + k - n, 0)`, `before = total // 2`. For n = 768: k3 -> (0, 1), k5 -> (1, 2).
PyTorch-style symmetric padding shifts every strided conv by one pixel (a classic porting bug).
'''),
    ("code", '''
from minig3n import mobilenetv5 as mv

print("n=768 k=3 s=2:", mv.same_padding(768, 3, 2), "  k=5:", mv.same_padding(768, 5, 2),
      "  n=10 k=5 s=1:", mv.same_padding(10, 5, 1))
assert mv.same_padding(768, 3, 2) == (0, 1) and mv.same_padding(768, 5, 2) == (1, 2)

x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)                 # 0..15, row-major
w = np.ones((1, 1, 3, 3))
same = mv.conv2d(x, w, 2)[0, 0]
sym = np.array([[np.pad(x[0, 0], 1)[r:r + 3, c:c + 3].sum() for c in (0, 2)] for r in (0, 2)])
print("SAME (pads bottom/right):\\n", same, "\\nsymmetric padding:\\n", sym)
assert same.tolist() == [[45, 39], [66, 50]] and not np.array_equal(same, sym)
'''),
    ("code", '''
from minig3n.config import VisionConfig

spec = mv.encoder_spec(VisionConfig())                                   # the published mobilenetv5_300m_enc
print("blocks per stage:", [len(s) for s in spec.stages], "| MSFA taps", spec.msfa_taps,
      spec.msfa_in_chs, "->", spec.msfa_mid_chs, "->", spec.msfa_out_chs, "at", spec.msfa_resolution)
shapes = mv.vision_weight_shapes(VisionConfig())
print(f"{len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes.values()) / 1e6:.1f} M parameters")
b = spec.stages[2][0]
print(f"{mv.MOBILENETV5_300M_ARCH_DEF[2][0]} -> {b.kind}: {b.in_chs} -> {b.mid_chs} -> {b.out_chs} channels, "
      f"depthwise start {b.dw_start} / mid {b.dw_mid} (stride {b.stride}), residual {b.has_skip}")
assert [len(s) for s in spec.stages] == [3, 5, 37, 39]
'''),
    ("md", '''
## The encoder against timm

The fixture's encoder uses every block kind at a small size (a 64 x 64 input, MSFA output 2 x 2). We run
pixels -> MSFA output and compare every traced block, then the soft tokens the language model reads:
flatten the map row-major, times sqrt(2048), then `embed_vision`'s soft path.
'''),
    ("code", '''
g = load_golden("vision_encoder")
d = dict(g.meta["vision_config"])
d["model_args"] = dict(d["model_args"], msfa_output_resolution=g.meta["cases"]["sq"]["msfa_output_resolution"])
vcfg = VisionConfig.from_dict(d)
for dt, out, tol in MODES:
    o = {k[len("sq."):]: v for k, v in getattr(g, out).items() if k.startswith("sq.")}
    p = {k[len("timm_model."):]: v.astype(dt) for k, v in g.weights.items() if k.startswith("timm_model.")}
    trace = {}
    feats = mv.vision_encoder(g.inputs["sq.pixel_values"].astype(dt), p, vcfg, trace=trace, prefix="")
    errs = {k[1:]: rel_err(v, o[k[1:]]) for k, v in trace.items()}
    worst = max(errs, key=errs.get)
    print(f"{len(errs)} traced modules ({np.dtype(dt).name}), worst {worst}: {errs[worst]:.2e}")
    assert errs[worst] <= tol
    check(f"MSFA output ({np.dtype(dt).name})", feats, o["msfa"], tol)
    pe = {k[len("embed_vision."):]: v.astype(dt) for k, v in g.weights.items() if k.startswith("embed_vision.")}
    check(f"image soft tokens ({np.dtype(dt).name})", mv.image_soft_tokens(feats, pe, vcfg), o["soft_tokens"], tol)
print("feature map", feats.shape, "-> tokens", mv.image_soft_tokens(feats, pe, vcfg).shape)
'''),
    ("code", '''
from minig3n import image
from tests.vision_test_images import SMALL_CONFIGS, make_images

gi = load_golden("vision_image")
pics = make_images()
for name in ("rgb_40x30", "rgba_33x47", "p_36x26"):
    px = image.preprocess_image(pics[name], SMALL_CONFIGS["bilinear"], backend="pil")   # the fixture's backend
    check(f"preprocess {name}", px, gi.out32[f"bilinear.{name}"], 1e-6)
print("pixel values", px.shape, px.dtype, "in [", px.min(), ",", px.max(), "]")
'''),
    exercise('''
Re-implement `same_padding`, `conv2d`, `depthwise_conv2d`, `rms_norm2d`, the three blocks and `msfa`.
Put them in `mobilenetv5.py` / `image.py` in your `MINIG3N_STUDENT` directory (ASSIGNMENTS.md), then run

    MINIG3N_STUDENT=~/my_g3n pytest tests/test_vision_encoder.py tests/test_vision_image.py
'''),
]

LATE["12_multimodal"] = [
    ("md", '''
# 12 · Multimodal: one sequence with text, images and audio

The processor (`minig3n/processor.py`) turns chat messages with image and audio parts into ids and arrays:
each image becomes `\\n\\n<start_of_image>` + N x `<image_soft_token>` + `<end_of_image>\\n\\n` (N = 256 in
E2B/E4B), each audio clip the same with 188 `<audio_soft_token>`s. The model (`minig3n/multimodal.py`,
numerics doc §4) then, per position:

1. `embed_tokens(id) * sqrt(D)` for every id;
2. ids from the vision offset up take the **hard** path of `embed_vision` / `embed_audio`;
3. image soft tokens are overwritten, in order, by the vision tower's tokens (chapter 11);
4. audio soft tokens by the audio tower's (chapter 09), invalid frames replaced, padded to 188 with the
   hard embedding of the last audio id;
5. PLE: the token part from the **original** ids (every id >= the PLE vocabulary -> row 0), the
   projection part from the **merged** embeddings; then the text decoder as usual, causal everywhere.

Fixture: `multimodal_conversation` (the tiny checkpoint, two images and a 0.8 s clip; logits at 43
positions and 32 greedy tokens from `Gemma3nForConditionalGeneration`).
'''),
    ("code", SETUP),
    ("code", '''
from minig3n import multimodal

TINY = ROOT / "weights" / "tiny-random-gemma3n"
g = load_golden("multimodal_conversation")
ids = g.inputs["input_ids"].astype(np.int64)
model = multimodal.load_multimodal_model(TINY, np.float64)
cfg = model.ckpt.config
strip = "".join("I" if i == cfg.image_token_id else "A" if i == cfg.audio_token_id else
                "[" if i in (cfg.boi_token_id, cfg.boa_token_id) else "]" if i in (cfg.eoi_token_id, cfg.eoa_token_id)
                else "." for i in ids[0])
print(f"{ids.shape[1]} tokens (I image soft, A audio soft, [ ] begin/end, . text):")
print("\\n".join(strip[i:i + 100] for i in range(0, len(strip), 100)))
'''),
    ("code", '''
pos = g.inputs["positions"].astype(np.int64)
for dt, out, tol in ((np.float32, "out32", 1e-4), (np.float64, "out64", 1e-10)):
    m = model if dt == np.float64 else multimodal.load_multimodal_model(TINY, dt)
    logits, _ = multimodal.forward(m, ids, pixel_values=g.inputs["pixel_values"].astype(dt),
                                   input_features=g.inputs["input_features"].astype(dt),
                                   input_features_mask=g.inputs["input_features_mask"].astype(bool))
    check(f"logits at {len(pos)} positions ({np.dtype(dt).name})", logits[0, pos], getattr(g, out)["logits"], tol)
assert (logits[0].argmax(-1) == g.out32["argmax"].astype(np.int64)).all()
'''),
    ("md", '''
**Trap: the PLE token part reads the original ids.** Every image/audio id (>= the PLE vocabulary) reads
PLE row 0, so all of them share one token part, while the projection part (from the merged embeddings)
differs from one image token to the next:
'''),
    ("code", '''
trace = {}
multimodal.forward(model, ids, pixel_values=g.inputs["pixel_values"].astype(np.float64),
                   input_features=g.inputs["input_features"].astype(np.float64),
                   input_features_mask=g.inputs["input_features_mask"].astype(bool), trace=trace)
X = model.text.prefix
tok, proj = trace[X + "embed_tokens_per_layer"], trace[X + "per_layer_model_projection"]
mm = np.flatnonzero(ids[0] >= model.text.cfg.vocab_size_per_layer_input)
img = np.flatnonzero(ids[0] == cfg.image_token_id)
print(f"{len(mm)} multimodal positions share one PLE token row: {bool(np.all(tok[mm] == tok[mm[0]]))}; "
      f"projection parts of two image tokens equal: {bool(np.allclose(proj[img[0]], proj[img[1]]))}")
assert np.all(tok[mm] == tok[mm[0]]) and not np.allclose(proj[img[0]], proj[img[1]])
'''),
    exercise('''
Re-implement the merge (`merge_embeddings`, `hard_token_embeddings`, `audio_features`) and the processor's
placeholder expansion in `multimodal.py` / `processor.py` in your `MINIG3N_STUDENT` directory
(ASSIGNMENTS.md), then run

    MINIG3N_STUDENT=~/my_g3n pytest tests/test_multimodal.py
'''),
]

CHAPTERS.update(LATE)
