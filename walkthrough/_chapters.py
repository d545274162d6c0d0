"""The cell sources of every walkthrough chapter: {chapter name: [("md" | "code", source), ...]}.

Edit here, then ``python walkthrough/_build.py --execute`` writes the .ipynb files and executes them in a
Jupyter kernel (their outputs are committed). Rules for code cells: plain Python (no IPython magics), a few
seconds per chapter, deterministic (fixed seeds; no timings, no memory addresses in outputs), no network, no
torch; every comparison with the reference prints its relative error and asserts it; figures go through
``show(fig)`` (the setup cell), which writes a compact PNG without a metadata chunk.

Which checkpoint a chapter's pictures come from is one constant per model, below: the coordinator switches
a constant when a trained checkpoint lands, then re-executes (``_build.py --execute``). The golden fixtures
(``tests/goldens``) stay the numeric checks whatever these say.
"""

TEXT_MODEL = "weights/nano-gemma3n"            # trained on Shakespeare (chapters 00, 02-08)
MM_MODEL = "weights/nano-gemma3n-mm"          # multimodal pictures (09 audio, 11 vision, 12 multimodal)
MATFORMER_MODEL = "weights/nano-gemma3n-matformer"  # the model sliced in chapter 10 (nested FFNs if MatFormer-trained)
TINY_MODEL = "weights/tiny-random-gemma3n"     # the reference's tiny random checkpoint (numeric checks)


def _fill(src: str) -> str:
    return (src.replace("@TEXT_MODEL@", TEXT_MODEL).replace("@MM_MODEL@", MM_MODEL)
            .replace("@MATFORMER_MODEL@", MATFORMER_MODEL).replace("@TINY_MODEL@", TINY_MODEL))


SETUP = r'''
# Setup. Finds the repository root (the folder holding setup.cfg) wherever the kernel started, puts it on
# sys.path (minig3n, and tests/golden_io.py: the golden fixtures' reader), and makes figures reproducible.
import io
import sys
from pathlib import Path

_here = Path.cwd().resolve()
ROOT = next((d for d in (_here, *_here.parents) if (d / "setup.cfg").is_file() and (d / "minig3n").is_dir()), None)
if ROOT is None:                                  # started outside the clone: the clone minig3n was installed from
    import minig3n
    ROOT = Path(minig3n.__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib
matplotlib.use("Agg")                             # figures are displayed by show(), as fixed PNG bytes
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from tests.golden_io import load_golden, rel_err

plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9, "axes.titlesize": 10,
                     "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "minig3n"})
# float32 runs against the reference's float32 outputs, float64 runs against its lifted float64 outputs
# (tests/README.md: 1e-5 per module in float32, 1e-10 in float64).
MODES = [(np.float32, "out32", 1e-5), (np.float64, "out64", 1e-10)]


def show(fig):
    """Display ``fig`` as a PNG with no metadata chunk (re-executing gives the same bytes), then close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    display(Image(buf.getvalue()))


def check(name, got, want, tol):
    """Print the relative error max|got - want| / max|want| and assert it is within tol."""
    e = rel_err(got, want)
    print(f"{name:<44} rel err {e:9.2e}   (tol {tol:g})")
    assert e <= tol, f"{name}: rel err {e:.3g} > {tol}"
    return e
'''

# The trained text model on a line of Shakespeare, with every module's output traced (chapters 02-07).
NANO_LINE = r'''
from minig3n import decoder
from minig3n.tokenizer import Tokenizer

NANO = ROOT / "@TEXT_MODEL@"
nano = decoder.load_text_model(NANO, np.float32)
nano_tok = Tokenizer.from_dir(NANO)
LINE = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"
line_ids = np.asarray([nano_tok.encode(LINE)])                      # [1, T] (<bos> first)
line_trace = {}
line_logits, _ = decoder.forward(nano, line_ids, trace=line_trace)  # [1, T, V]; line_trace: name -> [T, ...]
pieces = [nano_tok.id_to_piece(int(i)) for i in line_ids[0]]
X = nano.prefix.rstrip(".")
print(f"{NANO.name}: {len(pieces)} tokens:", " ".join(pieces[:16]), "...")
'''


def md(text: str) -> tuple:
    return ("md", _fill(text))


def code(text: str) -> tuple:
    return ("code", _fill(text))


def source(text: str) -> tuple:
    return ("md", "**Sources.** " + text.strip())


def poke(*items: str) -> tuple:
    return ("md", "## Things to poke at\n\n" + "\n".join(f"* {i.strip()}" for i in items))


def questions(*qa: tuple) -> tuple:
    """Conceptual questions, each answer folded away (click to open; GitHub and Jupyter both render it)."""
    parts = ["## Questions\n\nThink first, then open the answer."]
    for i, (q, a) in enumerate(qa, 1):
        parts.append(f"**Q{i}.** {q.strip()}\n\n<details><summary>Answer</summary>\n\n{a.strip()}\n\n</details>")
    return ("md", "\n\n".join(parts))


def exercise(text: str) -> tuple:
    return ("md", "## Exercise (graded)\n\n" + text.strip() + "\n\nThe workflow is in "
            "[walkthrough/ASSIGNMENTS.md](ASSIGNMENTS.md): `python walkthrough/make_stub.py MODULE DIR` writes "
            "the stub, you implement it, and `python -m tests.grade --student DIR --only MODULE` gives your "
            "points and a FEEDBACK.md (the golden tests above grade the same code).")


TRANSFORMERS = "https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/"
MODELING = f"[`transformers/models/gemma3n/modeling_gemma3n.py`]({TRANSFORMERS}modeling_gemma3n.py) (v5.24.0)"
CARD = "[Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n)"

CHAPTERS = {}

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["00_overview"] = [
    md(r'''
# 00 · Gemma 3n on one page

Gemma 3n ([model card](https://ai.google.dev/gemma/docs/gemma-3n)) is a decoder-only language model that
also reads images and audio. One forward pass, in the order this walkthrough takes it apart:

1. **Towers.** Text ids are looked up, $h_t = \sqrt{D}\,E[x_t]$. An image goes through MobileNetV5 and its
   multi-scale fusion adapter (256 vectors), an audio clip through log-mel features and the USM conformer
   (one vector per 160 ms, 188 for 30 s); each is mapped into the text width by a small embedder.
2. **Merge.** The prompt holds runs of placeholder ids (`<image_soft_token>`, `<audio_soft_token>`); their
   rows of $h$ are overwritten by the towers' vectors.
3. **Decoder.** Per-layer embeddings $\mathrm{ple}_{t,l}$ (a small extra vector per token *per layer*),
   $K = 4$ AltUp streams, then $L$ layers of
   $$X \xrightarrow{\text{predict}} \hat X \xrightarrow{\;\mathrm{attn} + \mathrm{LAuReL},\ \mathrm{MLP}\;}
   o \xrightarrow{\text{correct}} X' ,\qquad X'_i \mathrel{+}= \mathrm{proj}(\mathrm{ple}_{l})\ (i \ge 1),$$
   then the streams are collapsed into one, normed, and multiplied by the embedding matrix (tied head):
   $z = 30 \tanh\!\big(h_T E^\top / 30\big)$.
4. **Generate.** Sample a token from $\mathrm{softmax}(z)$, append it, repeat; the KV cache keeps past keys
   and values so each step costs one token.

Every box below names the chapter that opens it.
'''),
    code(SETUP),
    code(r'''
from matplotlib.patches import FancyBboxPatch

fig, ax = plt.subplots(figsize=(11.5, 5.6))
ax.set(xlim=(0, 16), ylim=(0, 9.9)); ax.axis("off")


def box(x, y, w, h, text, color, size=8.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.15", fc=color, ec="0.3"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(x0, y0, x1, y1, **kw):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.2, **kw))


TXT, IMG, AUD, DEC = "#dbe9f6", "#fde2c8", "#d9f0d3", "#ece2f0"
for y, name, enc, c in ((7.2, "text ids\n[T]", "embed_tokens $\\cdot\\sqrt{D}$\n[T, D]   ch 01", TXT),
                        (4.4, "image\n768 x 768", "MobileNetV5 + MSFA\n+ embed_vision\n256 x D   ch 11", IMG),
                        (1.6, "audio\n16 kHz", "log-mel + USM\n+ embed_audio\n188 x D   ch 09", AUD)):
    box(0.1, y, 1.7, 1.2, name, c)
    box(2.3, y - 0.15, 2.9, 1.5, enc, c)
    arrow(1.85, y + 0.6, 2.25, y + 0.6)
    arrow(5.25, y + 0.6, 5.9, y + 0.6)
box(5.95, 1.3, 1.5, 7.4, "merge:\nsoft tokens\nreplace the\nplaceholders\n\nch 12", "#f4f4f4")
ax.add_patch(FancyBboxPatch((7.95, 0.6), 5.0, 8.3, boxstyle="round,pad=0.05,rounding_size=0.2", fc="white",
                            ec="0.5", ls="--"))
ax.text(10.45, 9.05, "text decoder (ch 07)", ha="center", fontsize=9, weight="bold")
box(8.2, 7.5, 4.5, 0.85, "per-layer embeddings (ch 02)", DEC)
box(8.2, 6.3, 4.5, 0.85, "AltUp: 4 streams (ch 03)", DEC)
box(8.2, 2.9, 4.5, 3.05, "x L layers:\nAltUp predict (03)\nattention, KV sharing (05)\n+ LAuReL (04)\n"
    "MLP, top-k sparsity (06)\nAltUp correct, + per-layer input", DEC)
box(8.2, 0.9, 4.5, 1.6, "collapse -> norm -> tied head\n-> $30\\tanh(z/30)$: logits [T, V]", DEC)
for y0, y1 in ((7.5, 7.15), (6.3, 5.95), (2.9, 2.5)):
    arrow(10.45, y0, 10.45, y1)
arrow(7.5, 5.0, 8.15, 5.0)
box(13.5, 3.9, 2.3, 1.6, "sample:\ntemperature,\ntop-k, top-p\n(ch 08)", "#fff3b0")
arrow(12.75, 1.7, 14.6, 3.85)
ax.annotate("", (1.0, 8.45), (14.6, 5.55), arrowprops=dict(arrowstyle="-|>", color="#b8860b", lw=1.4,
                                                             connectionstyle="arc3,rad=0.3"))
ax.text(13.2, 7.6, "next token,\nKV cache (ch 08)", color="#8b6508", fontsize=8.5)
show(fig)
'''),
    md(r'''
## Where the parameters are

E2B's name counts *effective* parameters. The two embedding tables (the token embedding and the
per-layer-embedding table) are lookups: a token reads one row, so they can stay on disk or in slow memory
(chapter 01). The numbers below are computed from the configuration alone (chapter 10 explains them).
'''),
    code(r'''
from minig3n import matformer
from minig3n.config import e2b_config, e4b_config

fig, ax = plt.subplots(figsize=(9, 1.9))
for row, (name, cfg) in enumerate((("E2B", e2b_config()), ("E4B", e4b_config()))):
    c = matformer.count_config(cfg)
    parts = [("decoder (effective)", c.effective, "#6a51a3"), ("token embedding", c.token_embedding, "#9e9ac8"),
             ("per-layer embeddings", c.per_layer_embedding, "#dadaeb"), ("audio tower", c.audio, "#74c476"),
             ("vision tower", c.vision, "#fd8d3c"), ("embedders", c.embedders, "0.6"),
             ("LM head (tied: the token embedding again)", c.lm_head, "0.88")]
    left = 0
    for label, n, color in parts:
        ax.barh(row, n / 1e9, left=left, color=color, label=label if row == 0 else None, ec="white")
        if n / 1e9 > 0.25:
            ax.text(left + n / 2e9, row, f"{n / 1e9:.2f}", ha="center", va="center", fontsize=8)
        left += n / 1e9
    print(f"{name}: total {c.total / 1e9:.2f} B, effective {c.effective / 1e9:.2f} B")
ax.set(yticks=[0, 1], yticklabels=["E2B", "E4B"], xlabel="parameters (billions)")
ax.invert_yaxis(); ax.legend(ncol=3, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.45), frameon=False)
show(fig)
'''),
    md(r'''
## A taste: the trained nano writes Shakespeare

`weights/nano-gemma3n` is a 2.7 M-parameter Gemma 3n text decoder trained here on Shakespeare, with every
text feature switched on (AltUp, LAuReL, PLE, KV sharing, sparsity). Chapters 02-08 draw its insides.
'''),
    code(r'''
from minig3n.generate import generate

NANO = ROOT / "@TEXT_MODEL@"
prompt = "ROMEO.\n"
print(prompt + "".join(piece for _, piece in generate(NANO, prompt, max_new_tokens=40)))
'''),
    md(r'''
## The chapters

| # | chapter | what you see |
|---|---|---|
| 01 | [config and checkpoint](01_config_checkpoint.ipynb) | `config.json`, safetensors by hand, BF16 widening, where the nano's parameters are |
| 02 | [per-layer embeddings](02_per_layer_embeddings.ipynb) | the layer-major table, the per-layer inputs of a real sentence |
| 03 | [AltUp](03_altup.ipynb) | the trained router's coefficients per layer, the streams' norms |
| 04 | [LAuReL](04_laurel.ipynb) | the low-rank branch next to attention, layer by layer |
| 05 | [attention and KV sharing](05_attention_kv_sharing.ipynb) | masks, RoPE, heatmaps of the nano on Shakespeare, sliding vs full |
| 06 | [MLP and sparsity](06_mlp_sparsity.ipynb) | the gate's distribution and its Gaussian top-k cutoff, zeros per layer |
| 07 | [decoder end to end](07_decoder_end_to_end.ipynb) | one layer drawn, the logit lens, `trace`/`compare` finding a bug |
| 08 | [generation](08_generation.ipynb) | softcap, temperature and top-p, the KV cache as it fills |
| 09 | [audio](09_audio.ipynb) | a spoken clip: waveform, mel filterbank, log-mel, USM output |
| 10 | [MatFormer](10_matformer.ipynb) | Google's parameter-vs-quality table, slicing a model |
| 11 | [vision](11_vision.ipynb) | a photo through preprocessing, MobileNetV5's feature maps, MSFA |
| 12 | [multimodal](12_multimodal.ipynb) | the token layout of a prompt with an image and a clip, the merge |

Each chapter: the idea (with its maths and a picture), the source (paper, model card, the reference file),
the shapes, a check against the reference (golden fixtures written by transformers 5.24 / timm 1.0.31, in
float32 and float64), things to poke at, questions with folded answers, and a graded exercise
([ASSIGNMENTS.md](ASSIGNMENTS.md)).

## How to run them

```bash
pip install -e '.[walkthrough]'        # minig3n + matplotlib, ipykernel, nbclient, JupyterLab
jupyter lab walkthrough/
```

The kernel may start anywhere inside the clone: each chapter's setup cell walks up to the folder holding
`setup.cfg`. No GPU, no network, no PyTorch; each chapter runs in a few seconds. The committed chapters
hold their outputs; `python walkthrough/_build.py --execute` regenerates them (walkthrough/README.md).
Numeric traps are cited by section of [docs/NUMERICS.md](../docs/NUMERICS.md).
'''),
    poke(
        "Generate from other prompts (`generate(NANO, 'JULIET.\\n', max_new_tokens=60)`), or sample: `temperature=0.8, seed=0`.",
        "Print `matformer.count_config(e2b_config())`: which parts does Google's 'total' count that the bar above shows once?",
    ),
    questions(
        ("Why can E2B keep the per-layer-embedding table out of fast memory, but not the decoder weights?",
         "A token reads one row of the table (7680 numbers in E2B), once per forward pass; every decoder "
         "weight is read for every token. Row reads from disk or flash cost little; the decoder's matmuls "
         "need all of their weights."),
        ("In step 2, what would go wrong if image placeholders were ordinary text tokens in the PLE lookup?",
         "Nothing breaks, but the rule differs: ids beyond the PLE table (all media ids) read row 0 of it "
         "(chapter 02, chapter 12). A port that clamps them to the last row reads different numbers."),
    ),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["01_config_checkpoint"] = [
    md(r'''
# 01 · Config and checkpoint: reading a Hugging Face Gemma 3n with NumPy

A Gemma 3n checkpoint is a directory: `config.json` (every number the model uses) and `model.safetensors`
(or shards plus `model.safetensors.index.json`). minig3n reads both **unmodified**:

* `minig3n.config` turns `config.json` into dataclasses with the same key names (`TextConfig`,
  `AudioConfig`, `VisionConfig`, `Gemma3nConfig`). Its docstring holds the **legend of shape letters**
  used in every shape comment (`B` batch, `T` tokens, `D` hidden, `K` AltUp streams, `L` layers, `P`
  per-layer width, ...).
* `minig3n.checkpoint` memory-maps the safetensors files and converts a tensor to float32 (or float64)
  only when it is used. BF16 has no NumPy dtype: its 16 bits are the top half of a float32,
  $$x = (-1)^{s}\,2^{e-127}\,\Big(1 + \tfrac{m}{2^{7}}\Big),\qquad
  \text{bits}_{32} = \text{bits}_{16} \ll 16,$$
  so widening is a shift and **exact** (a BF16 number keeps float32's 8 exponent bits and 7 of its 23
  mantissa bits: the range of float32, about 3 significant digits).
* The per-layer-embedding table (`embed_tokens_per_layer`, 262144 x 7680 in E2B, about 2 B parameters) is
  never loaded whole: `Checkpoint.rows` gathers the rows of the ids at hand from the memory map.

Module: `minig3n/config.py`, `minig3n/checkpoint.py`. We use the tiny random multimodal checkpoint
`weights/tiny-random-gemma3n` (written by transformers 5.24, stored in BF16) for the checks and the trained
`weights/nano-gemma3n` for the picture of where parameters live.

**Intuition.** A checkpoint is a dictionary of named arrays plus the numbers that say how to wire them.
Keep the names as they are and read lazily, and the same loader serves a 3 MB test model and a 10 GB one.

**Shapes.** A tensor is stored as `[out, in]` (PyTorch's `nn.Linear` layout): `q_proj.weight` is
`[N*E, D]`, and `linear(x, w) = x @ w.T` maps `[..., D] -> [..., N*E]`.
'''),
    source(r'''
[safetensors format](https://github.com/huggingface/safetensors#format) ·
[bfloat16](https://en.wikipedia.org/wiki/Bfloat16_floating-point_format) · the reference's
[`configuration_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/configuration_gemma3n.py)
(v5.24.0) · the [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    code(r'''
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
    md(r'''
The real models follow the same rules at full size. E2B: 30 layers, every 5th one full attention (4, 9,
14, ...), the first 10 layers with 95 % activation sparsity, the last 10 layers reuse keys/values of
earlier ones (chapter 05).
'''),
    code(r'''
e2b = e2b_config().text
assert [i for i, lt in enumerate(e2b.layer_types) if lt == FULL] == [4, 9, 14, 19, 24, 29]
assert e2b.activation_sparsity_pattern == [0.95] * 10 + [0.0] * 20
assert e2b.first_kv_shared_layer == 20
print("E2B: intermediate sizes", set(e2b.intermediate_size), "| PLE width L*P =",
      e2b.num_hidden_layers * e2b.hidden_size_per_layer_input)
'''),
    md(r'''
## The safetensors format, by hand

8 bytes (little-endian length n), n bytes of JSON header (dtype, shape, byte range of each tensor), then
the raw bytes. That is all `SafetensorsFile` parses.
'''),
    code(r'''
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
    code(r'''
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
    md(r'''
**Trap (docs/NUMERICS.md §0): constants in BF16.** Hub checkpoints are BF16, and a BF16 run of the reference
rounds every scale buffer to BF16 too: the embedding scale sqrt(2048) = 45.254833 becomes 45.25. Compare
against the reference loaded in **float32** (widened weights, float32 constants), as minig3n does.
'''),
    code(r'''
s = np.array([2048 ** 0.5], dtype=np.float32)
s_bf16 = bf16_bits_to_float32(float32_to_bf16_bits(s))
print(f"sqrt(2048): float32 {s[0]:.6f}   bf16 {s_bf16[0]:.6f}")
assert s_bf16[0] == 45.25
'''),
    md(r'''
The same two numbers, bit by bit: BF16 is the top half of the float32 pattern; widening fills the lower 16
mantissa bits with zeros, and rounding to BF16 (what a BF16 run does to every constant) changes them.
'''),
    code(r'''
def bits32(x):
    return [int(b) for b in format(int(np.array([x], np.float32).view(np.uint32)[0]), "032b")]


fig, ax = plt.subplots(figsize=(10, 1.9))
for row, (label, val) in enumerate(((f"float32 {s[0]:.6f}", s[0]), (f"BF16 -> float32 {s_bf16[0]:.6f}", s_bf16[0]))):
    for i, b in enumerate(bits32(val)):
        color = "#fb6a4a" if i == 0 else "#6baed6" if i < 9 else "#74c476" if i < 16 else "#d9d9d9"
        ax.add_patch(plt.Rectangle((i, -row * 1.4), 0.95, 0.95, fc=color, ec="white"))
        ax.text(i + 0.47, -row * 1.4 + 0.45, str(b), ha="center", va="center", fontsize=8)
    ax.text(-0.5, -row * 1.4 + 0.45, label, ha="right", va="center", fontsize=9)
ax.plot([0, 16], [1.15, 1.15], color="k"); ax.text(8, 1.3, "BF16: the top 16 bits", ha="center", fontsize=8.5)
for x0, x1, t in ((0, 1, "sign"), (1, 9, "exponent (8)"), (9, 32, "mantissa (23; BF16 keeps 7)")):
    ax.text((x0 + x1) / 2, -2.35, t, ha="center", fontsize=8)
ax.set(xlim=(-9, 32.5), ylim=(-2.6, 1.6)); ax.axis("off")
show(fig)
'''),
    md(r'''
## The per-layer-embedding table, row by row

`Checkpoint.rows(name, ids)` reads only the rows of `ids` from the memory map. In E2B the table holds
262144 x 7680 BF16 values (4 GB); a prompt touches a few hundred rows of it.
'''),
    code(r'''
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
    md(r'''
## Where a model's parameters are

The trained nano (2.7 M parameters) read by names alone: group the tensors by module and add up their
sizes. The token embedding doubles as the LM head (tied); the per-layer-embedding table is as large as
all six layers together, the same proportion as in E2B.
'''),
    code(r'''
import re
from collections import defaultdict

nano_ck = Checkpoint(ROOT / "@TEXT_MODEL@")
groups = defaultdict(int)
for name in nano_ck.names:
    n = int(np.prod(nano_ck.shape(name)))
    m = re.match(r"model\.layers\.(\d+)\.(\w+)", name)
    if m:
        part = {"self_attn": "attention", "mlp": "MLP", "altup": "AltUp", "laurel": "LAuReL"}.get(m[2], "norms, per-layer input")
        groups[(f"layer {m[1]}", part)] += n
    else:
        groups[("embeddings", name.split(".")[1])] += n
rows = ["embeddings"] + [f"layer {i}" for i in range(6)]
parts = sorted({p for _, p in groups}, key=lambda p: -sum(v for (r, q), v in groups.items() if q == p))
colors = dict(zip(parts, plt.cm.tab20(np.linspace(0, 1, len(parts)))))
fig, ax = plt.subplots(figsize=(9, 3.2))
for y, r in enumerate(rows):
    left = 0
    for p_ in parts:
        n = groups.get((r, p_), 0)
        if n:
            ax.barh(y, n / 1e3, left=left, color=colors[p_], ec="white", label=p_ if p_ not in ax.get_legend_handles_labels()[1] else None)
            left += n / 1e3
ax.set(yticks=range(len(rows)), yticklabels=rows, xlabel="thousands of parameters")
ax.invert_yaxis(); ax.legend(fontsize=7.5, ncol=2, frameon=False)
show(fig)
print(f"{sum(groups.values()):,} parameters in {len(nano_ck.names)} tensors")
'''),
    md(r'''
## Sharded checkpoints

Big checkpoints come in shards: `model-00001-of-0000N.safetensors` files plus `model.safetensors.index.json`,
whose `weight_map` says which shard holds each tensor. `Checkpoint` reads both layouts. Here the tiny
checkpoint is re-written in 1 MiB shards (by `minig3n slice` with an identity spec, chapter 10) and read
back: every tensor is bit-identical.
'''),
    code(r'''
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
    md(r'''
The end-to-end proof that every tensor is read right comes in chapter 08: this checkpoint, run through
minig3n's decoder, produces the reference's greedy tokens, token for token.
'''),
    poke(
        "Round a few other constants to BF16 (`1 / sqrt(256)`, `Phi^-1(0.95) = 1.6448536`, `1e-6`): which ones survive exactly, and why?",
        "Open `weights/nano-gemma3n/config.json` next to `Gemma3nConfig.from_file(...)`: change `sliding_window` to a string in a copy and read the error message.",
        "`Checkpoint(TINY).rows(TABLE, ids)` with an id equal to the table's height: what does it say?",
    ),
    questions(
        ("Why is widening BF16 to float32 exact, but float32 to BF16 not?",
         "BF16 is the top 16 bits of a float32 (same sign and exponent, 7 of the 23 mantissa bits). Widening "
         "appends 16 zero bits: the same number. Narrowing drops 16 mantissa bits: it rounds."),
        ("A prompt of 1,000 tokens in E2B: how much of the 4 GB per-layer-embedding table is read?",
         "At most 1,000 rows of 7680 BF16 values: 1000 x 7680 x 2 bytes = 15 MB (fewer when tokens repeat)."),
        ("Where does the LM head's weight live in the nano's safetensors file?",
         "Nowhere on its own: the head is tied, it multiplies by `model.embed_tokens.weight` (chapter 07)."),
    ),
    exercise(r'''
Re-implement `bf16_bits_to_float32` (and, if you like, the header parsing of `SafetensorsFile`) from
`minig3n/checkpoint.py`. This chapter has no student-graded function (the loader's tests live in
`tests/test_checkpoint.py`, marker `foundation`): check your version against `Checkpoint.get` on the tiny
checkpoint as above.
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["02_per_layer_embeddings"] = [
    md(r'''
# 02 · Per-layer embeddings (PLE)

Besides the usual token embedding (width D), Gemma 3n gives **every decoder layer its own small embedding
of each token**. Two parts, computed once before layer 0 (docs/NUMERICS.md §1.3), for token $x_t$ with
input embedding $h_t \in \mathbb{R}^D$:

$$\underbrace{\tau_{t,l} = \sqrt{P}\; T\big[x_t,\; lP : (l+1)P\big]}_{\text{token part}} ,\qquad
\underbrace{\pi_{t,l} = \mathrm{RMSNorm}_w\Big(\big(D^{-1/2}\, W_{\text{proj}}\, h_t\big)_{lP:(l+1)P}\Big)}_{\text{projection part}},
\qquad \mathrm{ple}_{t,l} = \frac{\pi_{t,l} + \tau_{t,l}}{\sqrt 2}.$$

1. **Token part**: look the token up in a huge table $T$ with $L \cdot P$ columns (`embed_tokens_per_layer`,
   layer-major: layer l owns columns l·P .. l·P+P-1), times $\sqrt P$ (16.0 for P = 256).
2. **Projection part**: project the final input embedding with `per_layer_model_projection` [L·P, D],
   times $D^{-1/2}$, reshape to [L, P], RMS-norm over P with one shared weight [P].

**Intuition.** The token part is a per-layer *lookup*: what this token means to layer l, independent of
context, cheap because it is a row read. The projection part ties it to the actual (possibly multimodal)
embedding. Each layer then gates it into the AltUp streams.

`ple = (projection + token part) * 1/sqrt(2)`; layer l receives `ple[:, :, l, :]` and mixes it into the
AltUp streams after its MLP (chapter 07). In E2B the table alone holds 2.0 B parameters, about as many
as the rest of the decoder; the "2B" of E2B counts *effective* parameters, which leave out the embedding
tables (chapter 10), and the table stays on disk, read row by row (chapter 01).

Module: `minig3n/ple.py` (`ple_ids`, `per_layer_token_inputs`, `project_per_layer_inputs`,
`per_layer_inputs`). Fixture: `tests/goldens/text_ple.safetensors`.

**Shapes.** ids [B, T] -> table rows [B, T, L·P] -> token part [B, T, L, P]; embeddings [B, T, D] ->
projection [B, T, L·P] -> [B, T, L, P]; layer l reads `ple[:, :, l]` [B, T, P].
'''),
    source(r'''
`Gemma3nTextModel.get_per_layer_inputs` / `project_per_layer_inputs` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0); the [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n) ("Per-Layer Embeddings
(PLE) caching"). No paper describes PLE; the reference code is the specification.
'''),
    code(SETUP),
    md(r'''
## The table and a real sentence

The trained nano ($L = 6$, $P = 32$, so the table is 4096 x 192). Below: the rows of the table that a line
of *Hamlet* reads, one row per token, with the column blocks of the six layers marked.
'''),
    code(NANO_LINE),
    code(r'''
tcfg = nano.cfg
L_, P_ = tcfg.num_hidden_layers, tcfg.hidden_size_per_layer_input
rows = nano.ckpt.rows(nano.prefix + "embed_tokens_per_layer.weight", line_ids)[0]      # [T, L*P]
fig, ax = plt.subplots(figsize=(10, 4.8))
lim = np.abs(rows).max()
ax.imshow(rows, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
for l in range(1, L_):
    ax.axvline(l * P_ - 0.5, color="k", lw=1)
for l in range(L_):
    ax.text(l * P_ + P_ / 2, -1.2, f"layer {l}", ha="center", fontsize=8.5)
ax.set_yticks(range(len(pieces)), [repr(p)[1:-1] for p in pieces], fontsize=7)
ax.set(xlabel="column of embed_tokens_per_layer (layer-major: layer l owns columns lP .. lP+P-1)")
show(fig)
'''),
    md(r'''
What each layer receives, token by token: the size of the token part $\lVert\tau_{t,l}\rVert$ and of the
projection part $\lVert\pi_{t,l}\rVert$, and how much they agree (cosine). The projection part is
RMS-normed, so its size is nearly constant; the token part's size varies with the token.
'''),
    code(r'''
tau = line_trace[X + ".embed_tokens_per_layer"].reshape(len(pieces), L_, P_)         # [T, L, P]
pi = line_trace[X + ".per_layer_projection_norm"]                                     # [T, L, P]
cos = np.sum(tau * pi, -1) / (np.linalg.norm(tau, axis=-1) * np.linalg.norm(pi, axis=-1))
fig, axes = plt.subplots(3, 1, figsize=(10, 5.6), sharex=True)
for ax, (title, m, cmap) in zip(axes, (("token part |tau|", np.linalg.norm(tau, axis=-1), "viridis"),
                                       ("projection part |pi|", np.linalg.norm(pi, axis=-1), "viridis"),
                                       ("cos(tau, pi)", cos, "RdBu_r"))):
    kw = dict(vmin=-1, vmax=1) if cmap == "RdBu_r" else {}
    im = ax.imshow(m.T, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.set(ylabel="layer", title=title); fig.colorbar(im, ax=ax, pad=0.01)
axes[-1].set_xticks(range(len(pieces)), [repr(p)[1:-1] for p in pieces], rotation=90, fontsize=7)
show(fig)
print("mean |tau| per layer:", np.round(np.linalg.norm(tau, axis=-1).mean(0), 2),
      "| mean |pi| per layer:", np.round(np.linalg.norm(pi, axis=-1).mean(0), 2))
'''),
    md(r'''
## Against the reference
'''),
    code(r'''
from minig3n import ple
from minig3n.config import TextConfig

g = load_golden("text_ple")
cfg = TextConfig.from_dict(g.meta["config"])
L, P, U = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.vocab_size_per_layer_input
ids = g.inputs["input_ids"].astype(np.int64)                         # [B, T]
print(f"L={L} P={P} U={U} D={cfg.hidden_size}; ids row 0:", ids[0])
'''),
    md(r'''
**Trap: ids outside the table are mapped to row 0, not clamped.** The vocabulary (V) is larger than the
PLE table (U): the image/audio token ids (>= 262144 in E2B) have no PLE row. The reference maps them to
**row 0** (which is used as stored, not zeroed). Clamping to U - 1 would read another row.
'''),
    code(r'''
pid = ple.ple_ids(ids, U)                                            # [B, T]
outside = ids >= U
print("ids >= U:", ids[outside], "-> rows", pid[outside])
assert (pid[outside] == 0).all() and (pid[~outside] == ids[~outside]).all()
'''),
    code(r'''
for dt, out, tol in MODES:
    table = g.weights["embed_tokens_per_layer.weight"].astype(dt)    # [U, L*P]
    x = g.inputs["inputs_embeds"].astype(dt)                         # [B, T, D]
    tok = ple.per_layer_token_inputs(table[pid], L, P)               # [B, T, L, P]
    check(f"token part ({np.dtype(dt).name})", tok, getattr(g, out)["token_inputs"], tol)
    full = ple.per_layer_inputs(ids, x, table.__getitem__, g.weights, cfg)   # [B, T, L, P]
    check(f"per_layer_inputs ({np.dtype(dt).name})", full, getattr(g, out)["per_layer_inputs"], tol)
'''),
    md(r'''
The layout is layer-major: the reshape [L·P] -> [L, P] gives layer l the columns l·P .. l·P+P-1 (this is
also what lets MatFormer drop a layer's PLE by deleting its column block, chapter 10).
'''),
    code(r'''
row = g.weights["embed_tokens_per_layer.weight"][pid[0, 0]]         # [L*P]
tok0 = ple.per_layer_token_inputs(row[None, None], L, P)[0, 0]      # [L, P]
for l in range(L):
    assert np.array_equal(tok0[l], row[l * P:(l + 1) * P] * np.float32(P ** 0.5))
print("layer 2's slice:", tok0[2][:4], "...")
'''),
    md(r'''
**Trap: the D^-0.5 scale sits before the norm.** A norm undoes a scale, except through its eps: dropping
the scale changes the output a little, far above float64 round-off. Required for exactness.
'''),
    code(r'''
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
    poke(
        "Zero the token part (`tau = 0`) for the nano and compare the next-token loss on `LINE` with the full model (hint: `per_layer_inputs` takes a `lookup_rows` function; wrap it).",
        "Which tokens of the line have the largest token part in layer 0? Are they frequent or rare words (`weights/nano-gemma3n/unigram_counts.npy`)?",
        "Print `ple.ple_ids` for ids 4095, 4096 and 5000 with U = 4096.",
    ),
    questions(
        ("The table is layer-major. Which columns does MatFormer delete when it skips layer 3 of the nano?",
         "Columns 3*32 .. 4*32-1 = 96..127 of `embed_tokens_per_layer`, and the same 32 rows of "
         "`per_layer_model_projection` (chapter 10)."),
        ("RMSNorm removes any overall scale. Why does the $D^{-1/2}$ factor before it still matter?",
         "Through the eps: $\\mathrm{RMSNorm}(cx) = cx/\\sqrt{c^2\\,\\mathrm{ms}(x) + \\epsilon}$ depends on c "
         "unless eps is 0. The difference is small but far above float64 round-off, as the cell above shows."),
        ("Image and audio tokens have ids beyond the table. What token part do they get?",
         "Row 0 of the table (the `<pad>` row), as stored: `ple_ids` maps every id >= U to 0."),
    ),
    exercise(r'''
Implement `ple_ids`, `per_layer_token_inputs`, `project_per_layer_inputs` and `per_layer_inputs` in your
own `ple.py` (signatures and docstrings from `minig3n/ple.py`). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k ple
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["03_altup"] = [
    md(r'''
# 03 · AltUp: a wide residual stream for the price of a narrow layer

AltUp ([Baykal et al. 2023, *Alternating Updates for Efficient Transformers*](https://arxiv.org/abs/2301.13310))
keeps **K = 4 streams** $X_0 .. X_{K-1}$ of width D, but every layer runs on one of them (the *active*
stream 0). Around each layer (docs/NUMERICS.md §1.4, §1.5 steps 1 and 7, §1.8):

$$r = \tanh\!\Big(W_{\text{router}}\,\frac{\mathrm{RMSNorm}(X_0)}{D}\Big) \in \mathbb{R}^K,\qquad
C = \mathrm{reshape}_{K\times K}(W_{\text{pred}}\, r),\qquad \hat X_i = X_i + \sum_j C_{ij} X_j \quad\text{(predict)}$$

$$o = \mathrm{layer}(\hat X_0),\qquad g = W_{\text{corr}}\, r(o) + 1,\qquad
X'_i = \hat X_i + g_i\,(o - \hat X_0)\quad\text{(correct)}.$$

**Intuition.** A wider residual stream helps quality, but a layer's cost grows with its width. AltUp keeps a
$K D$-wide state and pays for a $D$-wide layer: the other streams are *predicted* by a cheap token-dependent
linear mix, then *corrected* by the innovation $o - \hat X_0$ the layer actually computed (a Kalman-filter
flavoured predict/correct).

Streams 1..K-1 are made from the token embedding by D x D projections rescaled to the embedding's RMS
(`make_streams`), and folded back the same way before the final norm (`collapse_streams`).

Module: `minig3n/altup.py`. Fixtures: `text_altup` (predict/correct on random streams),
`text_altup_streams` (stream creation and collapse).

**Shapes.** streams [K, B, T, D]; router output [B, T, K]; `prediction_coefs.weight` [K·K, K], so C is
[B, T, K, K]; `correction_coefs.weight` [K, K]; `correct_output_scale` [D].
'''),
    source(r'''
[AltUp, arXiv 2301.13310](https://arxiv.org/abs/2301.13310) · `Gemma3nTextAltUp` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0) · [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    md(r'''
## What the trained router does

On the nano (trained on Shakespeare) and a line of *Hamlet*: the prediction matrix $C$ of each layer,
averaged over the tokens (row i = how stream i is predicted from the streams j), the correction gains
$g_i$, and the RMS of every stream after every layer.
'''),
    code(NANO_LINE),
    code(r'''
from minig3n import altup

tcfg, K = nano.cfg, nano.cfg.altup_num_inputs
streams_in = [altup.make_streams(line_trace[X + ".embed_tokens"][None], nano.params(), tcfg)[:, 0]]   # [K, T, D]
streams_in += [line_trace[f"{X}.layers.{l}"] for l in range(tcfg.num_hidden_layers)]
Cs, gains = [], []
for l in range(tcfg.num_hidden_layers):
    S, pa = streams_in[l][:, None], nano.params(f"layers.{l}.altup")                               # [K, 1, T, D]
    r = altup.router_modalities(S[0], pa, tcfg)                                                    # [1, T, K]
    Cs.append((r @ pa["prediction_coefs.weight"].T).reshape(-1, K, K).mean(0))                     # [K, K]
    P_ = altup.predict(S, pa, tcfg)
    h = (P_[0] + line_trace[f"{X}.layers.{l}.post_attention_layernorm"] + line_trace[f"{X}.layers.{l}.laurel"]) / np.sqrt(2)
    o = h + line_trace[f"{X}.layers.{l}.post_feedforward_layernorm"]                               # [1, T, D]
    gains.append((altup.router_modalities(o, pa, tcfg) @ pa["correction_coefs.weight"].T + 1)[0].mean(0))  # [K]
    assert np.allclose(altup.correct(P_, o, pa, tcfg)[0, 0], streams_in[l + 1][0], atol=1e-4)      # our o is the layer's o

fig, axes = plt.subplots(1, tcfg.num_hidden_layers, figsize=(11, 2.2))
lim = max(np.abs(C).max() for C in Cs)
for l, (ax, C) in enumerate(zip(axes, Cs)):
    im = ax.imshow(C, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(title=f"layer {l}", xticks=range(K), yticks=range(K), xlabel="from stream j")
axes[0].set_ylabel("stream i")
fig.colorbar(im, ax=axes, shrink=0.8, label="mean C[i, j]")
show(fig)

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3))
for i in range(K):
    a1.plot(range(tcfg.num_hidden_layers), [g[i] for g in gains], "o-", label=f"stream {i}")
    a2.plot(range(tcfg.num_hidden_layers + 1), [np.sqrt(np.mean(S[i] ** 2)) for S in streams_in], "o-", label=f"stream {i}")
a1.axhline(1, color="0.6", ls=":"); a1.set(xlabel="layer", ylabel="mean correction gain g_i", title="correct: gains")
a2.set(xlabel="after layer (0 = the embedding)", ylabel="RMS over tokens and D", title="stream RMS", xticks=range(7),
       xticklabels=["emb"] + [str(l) for l in range(tcfg.num_hidden_layers)])
a1.legend(fontsize=8); show(fig)
'''),
    md(r'''
The active stream 0 is the one the layers write into; the gains say how strongly each other stream takes
up the layer's innovation. A gain of 1 everywhere would make every stream move by the same amount.

## Against the reference
'''),
    code(r'''
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
    md(r'''
**Trap: the orientation of C.** The reference permutes and matmuls; it reduces to `C[i, j] = (r W_pred^T)[K*i + j]`
(row-major) and `P_i = X_i + sum_j C[i, j] X_j`. Written out for one token with loops:
'''),
    code(r'''
X = g.inputs["streams"].astype(np.float64)
r = altup.router_modalities(X[0], p, cfg)                                   # [B, T, K]
C = (r @ p["prediction_coefs.weight"].T.astype(np.float64)).reshape(*r.shape[:2], K, K)   # [B, T, K, K]
b, t_ = 1, 5
loops = np.stack([X[i, b, t_] + sum(C[b, t_, i, j] * X[j, b, t_] for j in range(K)) for i in range(K)])
check("predict, one token by loops", loops, altup.predict(X, p, cfg)[:, b, t_], 1e-12)
'''),
    md(r'''
**Experiment: identity coefficients.** With `prediction_coefs = 0`, C = 0 and the prediction is the input.
With `correction_coefs = 0`, every gain is 0 + 1 = 1: every stream moves by the same innovation `o - P_0`,
and stream 0 becomes exactly o. **Trap:** the innovation is taken against the *prediction* P_0, not the
layer input X_0, and `correct_output_scale` is a plain multiply (no `1 + s`).
'''),
    code(r'''
zero = dict(p, **{"prediction_coefs.weight": np.zeros_like(p["prediction_coefs.weight"]),
                  "correction_coefs.weight": np.zeros_like(p["correction_coefs.weight"])})
o_ = np.random.default_rng(0).normal(size=X.shape[1:])                      # a stand-in layer output
P = altup.predict(X, zero, cfg)
Q = altup.correct(P, o_, zero, cfg)
assert np.array_equal(P, X)
assert np.allclose(Q, X + (o_ - X[0])[None], rtol=0, atol=1e-14) and np.allclose(Q[0], o_, rtol=0, atol=1e-14)
print("identity coefficients: P == X, Q_i == X_i + (o - X_0), Q_0 == o")
'''),
    md(r'''
## Making and collapsing the streams

Stream i > 0 is `altup_projections.{i-1}(E)` rescaled to the RMS of the embedding E:
`Y * rms(E) / sqrt(max(mean(Y^2), 1e-5))`. **Trap:** the target RMS has no eps, and the 1e-5 clamp is on
the mean square, before the sqrt. After the last layer, `collapse_streams` unembeds streams 1..K-1, rescales
them to stream 0's RMS and averages all K.
'''),
    code(r'''
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
    poke(
        "Set the nano's `correction_coefs` to zero (gains 1) and compare the loss on `LINE` with the trained model's.",
        "Plot the per-token C[0, 1] for layer 0 against the tokens of the line: does punctuation route differently?",
        "`collapse_streams` averages K streams: try keeping stream 0 only for the nano and look at the greedy text.",
    ),
    questions(
        ("Why does AltUp cost only about as much as one D-wide layer, when the state is K x D wide?",
         "The layer (attention, MLP) runs on one D-wide stream. Predict and correct are K x K mixes of "
         "whole streams plus a router with D x K weights: O(K^2 D) per token against O(D^2) for the layer."),
        ("After `correct`, what is stream 0 when all correction coefficients are zero?",
         "Exactly $o$: $X'_0 = \\hat X_0 + 1\\cdot(o - \\hat X_0) = o$ (the experiment above)."),
        ("The router divides by D after the norm (not by $\\sqrt D$). What does that do to $r$?",
         "After the norm every entry has RMS about 1 (times the norm weight); dividing by D makes the router's "
         "logits small, so $\\tanh$ starts in its near-linear range and the learned weights set the scale. "
         "Whatever the training reason, a port must use exactly $1/D$ (as a float32 constant): the router "
         "feeds every prediction and correction."),
    ),
    exercise(r'''
Implement `router_modalities`, `predict`, `correct`, `scale_corrected_output`, `make_streams` and
`collapse_streams` in your own `altup.py`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k altup
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["04_laurel"] = [
    md(r'''
# 04 · LAuReL: a cheap low-rank branch next to attention

LAuReL ([Menghani et al. 2024, *LAuReL: Learned Augmented Residual Layer*](https://arxiv.org/abs/2411.07501),
the low-rank variant) replaces a plain residual $x$ by

$$\mathrm{laurel}(x) = x + \mathrm{RMSNorm}_w\big(W_R\, W_L\, x\big),\qquad W_L \in \mathbb{R}^{R\times D},\;
W_R \in \mathbb{R}^{D\times R},$$

with rank R = 64 much smaller than D = 2048. In Gemma 3n it runs on the **normed** active stream n (the
attention input), and its output is averaged with the attention branch (chapter 07):

$$h = \frac{a + \mathrm{attn}(n) + \mathrm{laurel}(n)}{\sqrt 2}.$$

**Intuition.** The residual connection carries $x$ unchanged; LAuReL lets it carry a learned, cheap
(rank-R) linear function of $x$ as well: $2RD + D$ parameters instead of $D^2$.

Module: `minig3n/laurel.py` (`laurel(x, p, eps)`). Fixture: `text_laurel`.

**Shapes.** x [B, T, D] -> `linear_left` [R, D] -> [B, T, R] -> `linear_right` [D, R] -> [B, T, D];
`post_laurel_norm.weight` [D].
'''),
    source(r'''
[LAuReL, arXiv 2411.07501](https://arxiv.org/abs/2411.07501) · `Gemma3nTextLaurelBlock` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0).
'''),
    code(SETUP),
    md(r'''
## LAuReL next to attention, in the trained nano

Per layer, on a line of *Hamlet*: the RMS of the branches that are summed into $h$: the active stream $a$,
the attention branch (after its norm), and LAuReL's low-rank part $\mathrm{laurel}(n) - n$ (the part that is
not a copy of $n$), and how aligned LAuReL's part is with attention's (cosine, per token).
'''),
    code(NANO_LINE),
    code(r'''
from minig3n import altup

L_ = nano.cfg.num_hidden_layers
S = [altup.make_streams(line_trace[X + ".embed_tokens"][None], nano.params(), nano.cfg)[:, 0]] + \
    [line_trace[f"{X}.layers.{l}"] for l in range(L_)]
rms = lambda v: float(np.sqrt(np.mean(v ** 2)))
stats = []
for l in range(L_):
    a = altup.predict(S[l][:, None], nano.params(f"layers.{l}.altup"), nano.cfg)[0, 0]            # [T, D]
    n = line_trace[f"{X}.layers.{l}.input_layernorm"]
    att = line_trace[f"{X}.layers.{l}.post_attention_layernorm"]
    low = line_trace[f"{X}.layers.{l}.laurel"] - n                                                 # [T, D]
    cos = np.sum(low * att, -1) / (np.linalg.norm(low, axis=-1) * np.linalg.norm(att, axis=-1))
    stats.append((rms(a), rms(n), rms(att), rms(low), cos))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.1))
w = 0.2
for k, (label, c) in enumerate((("a (active stream)", "0.6"), ("n = norm(a)", "#9ecae1"),
                                ("attention branch", "#3182bd"), ("LAuReL: laurel(n) - n", "#e6550d"))):
    a1.bar(np.arange(L_) + (k - 1.5) * w, [s_[k] for s_ in stats], w, label=label, color=c)
a1.set(xlabel="layer", ylabel="RMS", title="the branches summed into h", ylim=(0, 4.6)); a1.legend(fontsize=7, ncol=2, loc="upper left")
a2.boxplot([s_[4] for s_ in stats], positions=range(L_)); a2.axhline(0, color="0.6", ls=":")
a2.set(xlabel="layer", ylabel="cosine per token", title="LAuReL's part vs attention's")
show(fig)
'''),
    md(r'''
How many of its $R$ directions does each trained LAuReL use? The singular values of the rank-$R$ map
$W_R W_L$ (before the norm), per layer. In the nano, layer 0 spreads its map over many directions, while
the upper layers put most of it into one or two: a rank-1 or rank-2 branch would do there.
'''),
    code(r'''
R_ = nano.cfg.laurel_rank
fig, ax = plt.subplots(figsize=(6.5, 3))
for l in range(L_):
    pl = nano.params(f"layers.{l}.laurel")
    sv = np.linalg.svd(pl["linear_right.weight"] @ pl["linear_left.weight"], compute_uv=False)[:R_]
    ax.semilogy(range(1, R_ + 1), sv / sv[0], "o-", ms=3, label=f"layer {l}")
ax.set(xlabel="singular value index", ylabel="relative to the largest", title=f"W_R W_L, rank {R_}")
ax.legend(fontsize=7.5, ncol=2); show(fig)
'''),
    md(r'''
## Against the reference
'''),
    code(r'''
from minig3n.config import TextConfig
from minig3n.laurel import laurel

g = load_golden("text_laurel")
cfg = TextConfig.from_dict(g.meta["config"])
print({k: v.shape for k, v in g.weights.items()})
for dt, out, tol in MODES:
    check(f"laurel ({np.dtype(dt).name})", laurel(g.inputs["x"].astype(dt), g.weights, cfg.rms_norm_eps),
          getattr(g, out)["out"], tol)
'''),
    md(r'''
**Trap (docs/NUMERICS.md §0): norms multiply by w, never by 1 + w.** Gemma 2 and 3 stored zero-centred norm
weights and used `1 + w`; Gemma 3n's converter copied the JAX scales unchanged. The most common porting bug:
'''),
    code(r'''
wrong = dict(g.weights, **{"post_laurel_norm.weight": 1.0 + g.weights["post_laurel_norm.weight"]})
e = rel_err(laurel(g.inputs["x"].astype(np.float64), wrong, cfg.rms_norm_eps), g.out64["out"])
print(f"with (1 + w): rel err {e:.2e}")
assert e > 1e-3
'''),
    md(r'''
**Experiment: LAuReL is a residual block.** With `linear_right = 0` the branch is `rms_norm(0) = 0`, so
`laurel(x) = x` exactly. And its cost: `2 R D + D` parameters instead of `D^2` for a full-rank map.
'''),
    code(r'''
x = g.inputs["x"].astype(np.float64)
zero = dict(g.weights, **{"linear_right.weight": np.zeros_like(g.weights["linear_right.weight"])})
assert np.array_equal(laurel(x, zero, cfg.rms_norm_eps), x)
R, D = 64, 2048
print(f"E2B layer: LAuReL {2 * R * D + D:,} parameters vs a D x D map {D * D:,} ({(2 * R * D + D) / D**2:.1%})")
'''),
    poke(
        "Project a token's normed stream onto the top singular vector of layer 0's `W_R W_L`: which tokens of the line load on it most?",
        "Drop LAuReL from one nano layer (set `linear_right` to zero, as in the experiment above) and compare the loss on the line.",
    ),
    questions(
        ("With `linear_right = 0`, why is the result exactly $x$ and not $x$ plus a tiny eps effect?",
         "The branch is $\\mathrm{RMSNorm}(0) = 0 / \\sqrt{0 + \\epsilon} \\cdot w = 0$ exactly; the eps only "
         "prevents a division by zero."),
        ("Gemma 3n feeds LAuReL the *normed* stream n, but adds $a$ (not $n$) into $h$. Where is the residual?",
         "In $a$: $h = (a + \\mathrm{attn}(n) + n + \\mathrm{RMSNorm}(W_R W_L n))/\\sqrt 2$. LAuReL's own copy "
         "of $n$ is a second, normed residual; the $1/\\sqrt2$ keeps the sum's scale."),
    ),
    exercise(r'''
Implement `laurel(x, p, eps)` in your own `laurel.py`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k laurel
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["05_attention_kv_sharing"] = [
    md(r'''
# 05 · Attention: RoPE with two bases, sliding windows, GQA; and KV sharing

Ordinary causal attention with grouped K/V heads ([Vaswani et al. 2017](https://arxiv.org/abs/1706.03762),
GQA [Ainslie et al. 2023](https://arxiv.org/abs/2305.13245), RoPE [Su et al. 2021](https://arxiv.org/abs/2104.09864)),
for query head h and its K/V head $g = \lfloor h / (N/G) \rfloor$:

$$\mathrm{attn}_h(t) = \sum_{s \in \mathcal{M}(t)} \mathrm{softmax}_s\Big(\big\langle R_{t}\,\hat q_{t,h},\; R_{s}\,\hat k_{s,g}\big\rangle\Big)\, \hat v_{s,g},
\qquad \hat q = \mathrm{RMSNorm}_{w_q}(W_q x),\ \hat k = \mathrm{RMSNorm}_{w_k}(W_k x),\ \hat v = \mathrm{RMSNorm}(W_v x),$$

with $R_t$ the RoPE rotation of position t and $\mathcal{M}(t) = \{s \le t\}$ (full layers) or
$\{t - W < s \le t\}$ (sliding layers). Gemma 3n's twists (docs/NUMERICS.md §1.6):

* **Norms instead of a scale**: q and k are RMS-normed per head (`q_norm`, `k_norm`), v by a *weightless*
  RMSNorm, all **before** RoPE; the logit scale is **1.0** (no 1/sqrt(E)); no logit softcap.
* **Two RoPE bases**: sliding layers rotate with base 1e4, full layers with 1e6. Rotate-half on contiguous
  halves (pairs i and i + E/2), not interleaved pairs.
* **Two masks**: full layers see every earlier key; sliding layers the last `sliding_window` keys including
  the query itself (`q - W < k <= q`).
* **GQA**: query head h reads K/V head `h // (N / G)`.
* **KV sharing**: the last `num_kv_shared_layers` layers compute no K/V; each reuses the K/V of the last
  earlier layer of its type, from the same forward pass.

**Intuition.** Sliding layers are cheap local readers (their cache never exceeds W keys); a full layer every
few layers carries long-range information. Sharing K/V in the top layers removes their K/V projections and
cache entirely: they query what a lower layer already stored.

Modules: `minig3n/attention.py`, `minig3n/kv_share.py`. Fixtures: `text_attention_sliding`,
`text_attention_full`.

**Shapes.** x [B, T, D]; q [B, T, N, E]; k, v [B, S, G, E]; scores [B, G, N/G, T, S]; mask [B|1, T, S];
output [B, T, N·E] -> `o_proj` [D, N·E] -> [B, T, D].
'''),
    source(r'''
`Gemma3nTextAttention` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0); KV sharing: the [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n) ("KV cache
sharing"); papers linked above.
'''),
    code(SETUP),
    code(r'''
from minig3n import attention, kv_share
from minig3n.config import SLIDING, TextConfig, e2b_config


def ascii_mask(mask, title):
    """ASCII picture of a [T, S] boolean mask: '#' = the query (row) reads the key (column)."""
    print(title)
    for row in mask:
        print("   " + " ".join("#" if m else "." for m in row))


T = 8
ascii_mask(attention.attention_mask(np.arange(T), np.arange(T))[0], "full: k <= q")
ascii_mask(attention.attention_mask(np.arange(T), np.arange(T), sliding_window=3)[0], "sliding, window 3: q - 3 < k <= q")
ascii_mask(attention.attention_mask(np.arange(T), np.arange(T), np.array([[0, 0, 1, 1, 1, 1, 1, 1]]), 3)[0],
     "sliding, window 3, two left-pad tokens (pad queries see nothing -> output 0)")
sl = attention.attention_mask(np.arange(T), np.arange(T), sliding_window=3)[0]
assert sl.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]      # exactly W keys, the query included
'''),
    code(r'''
T = 24
masks = [("full: k <= q", attention.attention_mask(np.arange(T), np.arange(T))[0]),
         ("sliding, W = 8", attention.attention_mask(np.arange(T), np.arange(T), sliding_window=8)[0]),
         ("sliding, W = 8, 5 left-pad tokens",
          attention.attention_mask(np.arange(T), np.arange(T), (np.arange(T) >= 5)[None], 8)[0])]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
for ax, (title, m) in zip(axes, masks):
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1.3); ax.set(title=title, xlabel="key s", ylabel="query t")
show(fig)
'''),
    md(r'''
## RoPE

`inv_i = 1 / base^(2i/E)` (a float32 buffer), angle `pos * inv_i`, and
`out[i] = x[i] cos - x[i + E/2] sin`, `out[i + E/2] = x[i + E/2] cos + x[i] sin`. A rotation keeps the
norm, and the dot product of a rotated q and k depends only on the **distance** of their positions.
'''),
    code(r'''
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
    md(r'''
Each pair $(i, i + E/2)$ rotates at frequency $\theta_i = \text{base}^{-2i/E}$. With base $10^6$ (full
layers) the slow pairs turn far more slowly, so the full layers can tell apart positions thousands of
tokens apart; for one fixed vector $q$, $\langle R_{t} q, R_{s} q\rangle$ depends on $t - s$ only:
'''),
    code(r'''
E = 32                                                    # the nano's head_dim
qv = np.random.default_rng(1).normal(size=(1, 1, 1, E))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3))
d = np.arange(0, 2000, 4)
for base, c in ((1e4, "#3182bd"), (1e6, "#e6550d")):
    inv = attention.rope_inv_freq(base, E)
    a1.semilogy(inv, "o-", color=c, label=f"base {base:.0e}")
    cs = attention.rope_cos_sin(d[None], inv, np.float64)
    rq = attention.apply_rope(np.broadcast_to(qv, (1, len(d), 1, E)), *cs)
    a2.plot(d, (rq[0, :, 0] @ qv[0, 0, 0]) / np.sum(qv ** 2), color=c, label=f"base {base:.0e}")
a1.set(xlabel="pair index i", ylabel="theta_i (rad / position)", title="RoPE frequencies"); a1.legend()
a2.set(xlabel="distance t - s", ylabel="<R_t q, R_s q> / |q|^2", title="similarity of a vector to itself, moved")
a2.legend(); show(fig)
'''),
    md(r'''
**Trap (docs/NUMERICS.md §0): RoPE angles are float32 products.** The reference computes
`float32(pos) * inv_freq_f32` in float32 and only then takes cos/sin. A float64 angle drifts from it by
about pos x 6e-8 rad, already visible at position 500:
'''),
    code(r'''
inv_full = attention.rope_inv_freq(1_000_000.0, 256)
pos = 500
a32 = (np.float32(pos) * inv_full).astype(np.float64)
a64 = pos * inv_full.astype(np.float64)
print(f"max |angle32 - angle64| at pos {pos}: {np.abs(a32 - a64).max():.1e} rad")
assert np.abs(a32 - a64).max() > 1e-6
'''),
    md(r'''
## One attention block against the reference

The fixtures hold 2 sequences of 14 tokens, window 8 (so the sliding mask slides), and row 1 is
left-padded by 4 tokens. We build the mask and the RoPE tables of the layer's type, then run
`self_attention`.
'''),
    code(r'''
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
ascii_mask(run_attention(load_golden("text_attention_sliding"), np.float64)[1][1], "the sliding fixture's mask, row 1")
'''),
    md(r'''
**GQA**: N query heads share G K/V heads; head h reads K/V head `h // (N/G)` (the reference's `repeat_kv`
interleaving). **Trap: the scale is 1.0.** The q/k norms already fix the logits' size; a habitual
`1/sqrt(E)` is wrong:
'''),
    code(r'''
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
    md(r'''
## KV sharing

`kv_sharing_modes` marks each layer: None (ordinary), "store" (the producer of its type) or "reuse" (a
consumer). For E2B and E4B the consumers are layers 20.. and the producers layer 18 (sliding) and 19 (full).
**Trap (docs/NUMERICS.md §6.1):** transformers before 4.56 used the consumers' own K/V weights when no cache
was passed; in 5.24 sharing always happens and those weights are never read (our fixtures, written by
5.24, do not even store them).
'''),
    code(r'''
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
    md(r'''
## What the trained nano attends to

A passage of *Hamlet* (longer than the nano's window of 64) through the nano; for every layer, head 0's
attention probabilities, computed from the traced attention input with minig3n's own `query_states` /
`key_value_states`. Sliding layers (0, 1, 3, 4) cannot see past the dashed line $s = t - W$; full layers
(2, 5) can. Layers 3-5 compute no K/V: they query the keys of layer 1 (sliding) and layer 2 (full).
'''),
    code(r'''
from minig3n import decoder
from minig3n.tokenizer import Tokenizer

NANO = ROOT / "@TEXT_MODEL@"
nano, nano_tok = decoder.load_text_model(NANO, np.float32), Tokenizer.from_dir(NANO)
PASSAGE = ("HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
           "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles,\n"
           "And by opposing end them? To die--to sleep,\nNo more; and by a sleep to say we end\n"
           "The heart-ache and the thousand natural shocks\nThat flesh is heir to: 'tis a consummation\n")
pids = np.asarray([nano_tok.encode(PASSAGE)])
ptrace = {}
decoder.forward(nano, pids, trace=ptrace)
ncfg, T = nano.cfg, pids.shape[1]
W = ncfg.sliding_window
modes = kv_share.kv_sharing_modes(ncfg)
kv, probs = {}, []
for l in range(ncfg.num_hidden_layers):
    lt, pa = ncfg.layer_types[l], nano.params(f"layers.{l}.self_attn")
    base = ncfg.rope_local_base_freq if lt == SLIDING else ncfg.rope_theta
    cs = attention.rope_cos_sin(np.arange(T)[None], attention.rope_inv_freq(base, ncfg.head_dim), np.float32)
    x = ptrace[f"model.layers.{l}.input_layernorm"][None]                   # [1, T, D]
    q = attention.query_states(x, pa, ncfg, *cs)                             # [1, T, N, E]
    if modes[l] == "reuse":
        k = kv[lt]
    else:
        k, _ = attention.key_value_states(x, pa, ncfg, *cs)                  # [1, T, G, E]
        kv[lt] = k
    m = attention.attention_mask(np.arange(T), np.arange(T), sliding_window=attention.layer_sliding_window(ncfg, l))[0]
    s_ = np.where(m, q[0, :, 0] @ k[0, :, 0].T, -np.inf)                      # head 0 reads K/V head 0: [T, T]
    probs.append(np.exp(s_ - s_.max(-1, keepdims=True)) / np.exp(s_ - s_.max(-1, keepdims=True)).sum(-1, keepdims=True))
print(f"{T} tokens, window {W}; sharing modes {modes}")

from matplotlib.colors import PowerNorm
cmap = plt.get_cmap("magma_r").copy()
cmap.set_bad("0.85")                                                        # grey: masked out (probability 0)
fig, axes = plt.subplots(2, 3, figsize=(11, 7.4))
for l, ax in enumerate(axes.flat):
    ax.imshow(np.where(probs[l] > 0, probs[l], np.nan), cmap=cmap, norm=PowerNorm(0.4, 0, 1), interpolation="nearest")
    lt = ncfg.layer_types[l]
    if lt == SLIDING:
        ax.plot([0, T - W], [W - 1, T - 1], "--", color="#1f77b4", lw=1.2)
    src = f", K/V of layer {kv_share.kv_producer(ncfg, l)}" if modes[l] == "reuse" else ""
    ax.set(title=f"layer {l}: {lt.split('_')[0]}{src}", xlabel="key s", ylabel="query t")
show(fig)
'''),
    md(r'''
Zoom on the first 30 tokens of layer 2 (full) and layer 0 (sliding), labelled: which earlier tokens does each
token read?
'''),
    code(r'''
n = 30
lab = [repr(nano_tok.id_to_piece(int(i)))[1:-1] for i in pids[0, :n]]
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
for ax, l in zip(axes, (0, 2)):
    ax.imshow(np.where(probs[l][:n, :n] > 0, probs[l][:n, :n], np.nan), cmap=cmap, norm=PowerNorm(0.5, 0, 1))
    ax.set_xticks(range(n), lab, rotation=90, fontsize=7); ax.set_yticks(range(n), lab, fontsize=7)
    ax.set_title(f"layer {l} ({ncfg.layer_types[l].split('_')[0]}), head 0")
show(fig)
'''),
    poke(
        "Plot the other heads (`q[0, :, h]` with K/V head `h // (N // G)`). Do the two heads sharing a K/V head look alike?",
        "Shift the whole passage by 1000 positions (`np.arange(T) + 1000` in `rope_cos_sin`): are the probabilities the same? Why (up to float32)?",
        "Give the sliding layers a window of 8 in a copy of the config and watch the nano's loss on the passage.",
    ),
    questions(
        ("A sliding layer with W = 512 at position 10,000: how many keys does it keep in the KV cache?",
         "W - 1 = 511 past keys plus the current one: the window includes the query. minig3n's cache keeps "
         "`window - 1` (chapter 08)."),
        ("Why can Gemma 3n use a logit scale of 1.0 instead of $1/\\sqrt{E}$?",
         "q and k are RMS-normed per head (with learned weights), so their dot products already have a "
         "controlled size; the weights learn whatever temperature the layer needs."),
        ("Which K/V does layer 4 of the nano attend over, and which K/V projections does it have?",
         "It reuses layer 1's (the last non-shared sliding layer) keys and values; its own checkpoint has "
         "no `k_proj`, `v_proj`, `k_norm` or `v_norm`."),
    ),
    exercise(r'''
Implement in your own `attention.py`: `rope_inv_freq`, `rope_cos_sin`, `apply_rope`, `attention_mask`,
`layer_sliding_window` and `self_attention` (with your own `query_states`, `key_value_states`, `attend`
helpers); and in `kv_share.py`: `kv_sharing_modes`, `kv_producer`. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k "attention or rope or mask"
    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k kv_sharing
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["06_mlp_sparsity"] = [
    md(r'''
# 06 · The MLP and Gaussian top-k activation sparsity

A GeGLU feed-forward ([Shazeer 2020, *GLU Variants Improve Transformer*](https://arxiv.org/abs/2002.05202)),

$$\mathrm{mlp}(x) = W_{\text{down}}\Big(\mathrm{GELU}_{\tanh}\big(\tilde g\big) \odot W_{\text{up}}\,x\Big),\qquad
g = W_{\text{gate}}\,x \in \mathbb{R}^{I}.$$

On dense layers $\tilde g = g$. On the first layers (sparsity s = 0.95 on layers 0..9 of E2B/E4B) the gate
is **shifted down by its own statistics** and ReLU'd (docs/NUMERICS.md §1.7):

$$\tilde g = \mathrm{ReLU}\big(g - (\mu_g + \sigma_g\,\Phi^{-1}(s))\big),\qquad
\mu_g = \tfrac1I \textstyle\sum_i g_i,\quad \sigma_g^2 = \tfrac1I \sum_i (g_i - \mu_g)^2 .$$

**Intuition.** If the I gate values of a token were Gaussian, $\mu + 1.645\,\sigma$ would be their 95th
percentile: the cut keeps the top 5 % without sorting (a *statistical* top-k, from the Spark Transformer work
behind Gemma 3n). 95 % of the up/down columns then multiply zero, which a sparse kernel can skip.

Module: `minig3n/mlp.py` (`std_multiplier`, `gaussian_topk`, `mlp`). Fixtures: `text_mlp_sparse` (layer 0,
s = 0.95), `text_mlp_dense` (a layer with s = 0). Each layer may have its own intermediate size I.

**Shapes.** x [B, T, D]; `gate_proj`, `up_proj` [I, D] -> [B, T, I]; `down_proj` [D, I] -> [B, T, D];
the statistics are per token, over I.
'''),
    source(r'''
`Gemma3nTextMLP` (`_gaussian_topk`) in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0) · [GeGLU, arXiv 2002.05202](https://arxiv.org/abs/2002.05202) ·
[Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    md(r'''
## The trained gate and its cutoff

The nano has sparse MLPs in layers 0 and 1 (s = 0.95) and dense ones after. Its gate pre-activations on a
line of *Hamlet*: left, one token's 512 gate values, with the Gaussian of the same mean and std and the cut
$\mu + \Phi^{-1}(0.95)\,\sigma$; right, the share of exact zeros after the cut, per layer and token.
'''),
    code(NANO_LINE),
    code(r'''
from statistics import NormalDist

from minig3n import mlp
from minig3n.ops import linear

cfg_n = nano.cfg
gates = [linear(line_trace[f"{X}.layers.{l}.pre_feedforward_layernorm"], nano.params(f"layers.{l}.mlp")["gate_proj.weight"])
         for l in range(cfg_n.num_hidden_layers)]                                       # [T, I_l] each
t_ = 5
g0 = gates[0][t_]
mu, sd = g0.mean(), g0.std()
cut = mu + sd * float(mlp.std_multiplier(0.95))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
a1.hist(g0, bins=50, density=True, color="#9ecae1", label=f"gate values, token {pieces[t_]!r}")
xs = np.linspace(g0.min(), g0.max(), 200)
a1.plot(xs, [NormalDist(mu, sd).pdf(v) for v in xs], color="k", lw=1, label="Gaussian, same mean and std")
a1.axvline(cut, color="#e6550d", lw=2, label=f"cut mu + 1.645 sd: keeps {np.mean(g0 > cut):.1%}")
a1.set(xlabel="gate pre-activation g_i (layer 0)", ylabel="density"); a1.legend(fontsize=7.5)
zeros = [np.mean(mlp.gaussian_topk(g, s) == 0, axis=-1) if s > 0 else np.mean(g == 0, axis=-1)
         for g, s in zip(gates, cfg_n.activation_sparsity_pattern)]
a2.boxplot(zeros, positions=range(len(zeros)))
a2.axhline(0.95, color="#e6550d", ls=":", label="0.95")
a2.set(xlabel="layer (sparsity " + " ".join(str(s) for s in cfg_n.activation_sparsity_pattern) + ")",
       ylabel="share of zeros per token", title="exact zeros after the cut"); a2.legend(fontsize=8)
show(fig)
print("mean share of zeros per layer:", [round(float(z.mean()), 3) for z in zeros])
'''),
    md(r'''
The trained gate is not exactly Gaussian, so the share of zeros per token scatters around
95 %. And the shape of the kept activation: GELU of the *shifted* value, not GELU masked below the cut:
'''),
    code(r'''
from minig3n.ops import gelu_tanh

xs = np.linspace(-3, 4, 400)
c = 1.0
fig, ax = plt.subplots(figsize=(6.5, 3))
ax.plot(xs, gelu_tanh(xs), color="0.6", label="GELU(g) (dense layers)")
ax.plot(xs, gelu_tanh(np.maximum(xs - c, 0)), color="#e6550d", lw=2, label="GELU(ReLU(g - cut))  (Gemma 3n)")
ax.plot(xs, np.where(xs > c, gelu_tanh(xs), 0), "--", color="#3182bd", label="GELU(g) masked below the cut (wrong)")
ax.axvline(c, color="k", ls=":", lw=1); ax.text(c + 0.05, 3.2, "cut", fontsize=8)
ax.set(xlabel="g", ylabel="activation"); ax.legend(fontsize=7.5); show(fig)
'''),
    md(r'''
## Against the reference
'''),
    code(r'''
from statistics import NormalDist

from minig3n import mlp
from minig3n.config import TextConfig

z = mlp.std_multiplier(0.95)
print(f"Phi^-1(0.95): reference float32 {float(z)!r}, float64 (statistics.NormalDist) {NormalDist().inv_cdf(0.95)!r}")
assert float(z) == 1.6448535919189453        # docs/NUMERICS.md §0: the float32 value torch computes

for name in ("text_mlp_sparse", "text_mlp_dense"):
    g = load_golden(name)
    cfg, li = TextConfig.from_dict(g.meta["config"]), g.meta["layer_idx"]
    s = cfg.activation_sparsity_pattern[li]
    print(f"{name}: layer {li}, I = {cfg.intermediate_size[li]}, sparsity {s}")
    for dt, out, tol in MODES:
        check(f"  mlp ({np.dtype(dt).name})", mlp.mlp(g.inputs["x"].astype(dt), g.weights, s), getattr(g, out)["out"], tol)
'''),
    md(r'''
**Experiment: the fraction of zeros.** On Gaussian gate values the cut keeps about 5 %. On the fixture's
tiny layer (I = 48) the fraction per token is rougher, but near 95 % too.
'''),
    code(r'''
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
    md(r'''
**Trap: GELU of the shifted value, not a mask on GELU.** A natural reading of "top-k sparsity" is
`gelu(gate)` with the small entries masked. The reference applies GELU to `relu(gate - cutoff)`:
'''),
    code(r'''
up = linear(g.inputs["x"].astype(np.float64), g.weights["up_proj.weight"])
masked = np.where(kept > 0, gelu_tanh(gate), 0.0)                      # the tempting, wrong version
wrong = linear(masked * up, g.weights["down_proj.weight"])
e = rel_err(wrong, g.out64["out"])
print(f"mask on gelu(gate) instead of gelu(relu(gate - cutoff)): rel err {e:.2e}")
assert e > 1e-2
'''),
    md(r'''
## What the zeros buy: weights not read

A unit whose shifted gate is cut contributes $\mathrm{GELU}(0) \cdot (W_{\text{up}}x)_i = 0$ exactly, so its row
of `up_proj` and its column of `down_proj` need not be read at all. When the units some token keeps are at
most `mlp.LIVE_FRACTION` (a quarter) of I, which is always the case for one token at a time (decode), `mlp`
computes the up projection of the kept rows only (`ops.linear_rows`) and the down projection from the kept
columns only (`ops.linear_columns`). A prompt's tokens each keep their own 5 %, which together cover most of
the units; there `mlp` computes the up projection at each token's kept units only (`ops.linear_masked`: each
row with the tokens that keep it) and each token's down projection from its own nonzero inputs
(`ops.linear_nonzero`). The reference multiplies by the zeros instead; the results agree.

The columns need one more idea. Memory is read in 64-byte cache lines, 32 BF16 values, and a column of
`down_proj` [D, I] is one value in each row. Scattered over a row, the kept 5 % of the columns land in most of
its cache lines, so reading "only the kept columns" of the matrix as stored reads nearly all of it. Stored
column by column (the transpose [I, D], `BF16Weight.columns()`), a kept column is one contiguous run of D
values. minig3n makes that copy for the sparse layers' BF16 `down_proj` the first time the whole matrix is
read (usually by the prompt): memory traded for speed, the matrix once more. (A plain float32 or float64
array, as here, gets no copy: `linear_columns` puts the zeros back and multiplies the whole matrix, which
BLAS does faster than picking the columns out.)
'''),
    code(r'''
from minig3n.config import e2b_config

x1 = g.inputs["x"][:1, :1].astype(np.float64)                                        # [1, 1, D] one token
gate1 = mlp.gaussian_topk(linear(x1, g.weights["gate_proj.weight"]), 0.95)            # [1, 1, I]
kept1 = np.flatnonzero(gate1 > 0)
print(f"one token: {len(kept1)} of {gate1.shape[-1]} units kept: {len(kept1)} rows of up_proj and "
      f"{len(kept1)} columns of down_proj read")
dense = linear(gelu_tanh(gate1) * linear(x1, g.weights["up_proj.weight"]), g.weights["down_proj.weight"])
check("mlp, kept up rows and down columns only, vs the dense formula", mlp.mlp(x1, g.weights, 0.95), dense, 1e-14)
kept_all = mlp.gaussian_topk(linear(g.inputs["x"].astype(np.float64), g.weights["gate_proj.weight"]), 0.95) > 0
print(f"the prompt's {kept_all.shape[1]} tokens: each keeps {kept_all.mean(axis=-1).mean():.1%} of the units on "
      f"average, together {kept_all.any(axis=(0, 1)).mean():.0%} of them")

t = e2b_config().text
I = t.intermediate_size[0]
cols = np.random.default_rng(0).choice(I, int(0.05 * I), replace=False)              # 5 % of E2B's units
lines = len(np.unique(cols // 32))                                                    # 32 BF16 values per line
print(f"E2B: {len(cols)} kept columns of {I} fall in {lines} of the {I // 32} cache lines of a row "
      f"({lines / (I // 32):.0%}; 1 - 0.95^32 = {1 - 0.95 ** 32:.0%} expected)")
skipped = sum(0.95 * t.intermediate_size[l] * t.hidden_size * 2
              for l in range(t.num_hidden_layers) if t.activation_sparsity_pattern[l] > 0)
print(f"E2B, one decode step: about {skipped / 1e6:.0f} MB of up_proj rows and as much of down_proj columns "
      f"not read (BF16), for {skipped / 0.95 / 1e6:.0f} MB of transposed down_proj kept in memory")
'''),
    poke(
        "Make layer 2 of the nano sparse too (`activation_sparsity_pattern[2] = 0.95` in a copy of the config) and compare the loss on the line.",
        "Replace the statistical cut by an exact top-5 % (`np.partition`) in layer 0: how different are the outputs?",
        "Histogram the gate of a dense layer (3, 4, 5): is it closer to Gaussian?",
    ),
    questions(
        ("Why compute the cut from mean and std instead of sorting?",
         "A sort (or a partition) over I = 8192-16384 values per token is slow on accelerators; mean and std "
         "are two reductions. If the values are near Gaussian the result is nearly the same set."),
        ("What is $\\Phi^{-1}(0.95)$, and which value must a port use?",
         "About 1.6448536; the reference computes it with torch in float32: 1.6448535919189453. A float64 "
         "value differs in the 8th digit, which shows in a float64 comparison."),
        ("With the cut, can a token end up with *no* active unit at all?",
         "In principle yes: if the values are skewed to the left (a few very negative ones inflate sigma), "
         "even the largest can sit below $\\mu + 1.645\\sigma$, and the MLP outputs exactly 0 for that token. "
         "In the trained nano every token keeps a few percent, as the box plot shows."),
    ),
    exercise(r'''
Implement `std_multiplier`, `gaussian_topk` and `mlp` in your own `mlp.py` (`std_multiplier` must give
torch's float32 value 1.6448535919189453 for 0.95). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k "mlp or std_multiplier"
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["07_decoder_end_to_end"] = [
    md(r'''
# 07 · The decoder layer, end-to-end logits, trace and compare

One decoder layer (docs/NUMERICS.md §1.5), streams X [K, B, T, D] in, X' out. In one line:

$$h = \frac{a + \mathrm{N}_{\text{post-attn}}(\mathrm{attn}(n)) + \mathrm{laurel}(n)}{\sqrt2},\quad
o = h + \mathrm{N}_{\text{post-ffw}}\big(\mathrm{mlp}(\mathrm{N}_{\text{pre-ffw}}(h))\big),\quad
a = \hat X_0,\ n = \mathrm{N}_{\text{in}}(a),$$

then AltUp's correct and the per-layer input $e_l$ into streams $1..K-1$. Step by step:

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

**Shapes.** streams [K, B, T, D]; per-layer input [B, T, P]; every branch [B, T, D]; logits [B, T, V].
'''),
    source(r'''
`Gemma3nTextDecoderLayer`, `Gemma3nTextModel`, `Gemma3nForCausalLM` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0) · [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    code(r'''
from matplotlib.patches import FancyBboxPatch

fig, ax = plt.subplots(figsize=(11, 4.2))
ax.set(xlim=(0, 22), ylim=(-0.6, 8.6)); ax.axis("off")


def box(x, y, w, h, text, color="#ece2f0"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.12", fc=color, ec="0.35"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)


def arrow(x0, y0, x1, y1):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.1))


box(0.1, 3.3, 1.8, 1.6, "streams X\n[K, T, D]", "#dbe9f6")
box(2.5, 3.3, 1.9, 1.6, "AltUp\npredict\na = P_0")
box(5.0, 3.3, 1.7, 1.6, "input\nnorm: n")
box(7.4, 5.4, 2.4, 1.3, "attention\n+ post norm", "#c6dbef")
box(7.4, 1.5, 2.4, 1.3, "LAuReL\n(low rank)", "#fdd0a2")
box(10.5, 3.3, 2.1, 1.6, "h = (a + att\n+ lau) / sqrt 2", "#f4f4f4")
box(13.2, 3.3, 2.3, 1.6, "o = h + MLP\n(sparse / dense)", "#c7e9c0")
box(16.1, 3.3, 2.0, 1.6, "AltUp\ncorrect\n(P, o)")
box(18.7, 5.6, 3.1, 1.6, "stream 0 = Q_0\n(no PLE)", "#dbe9f6")
box(18.7, 1.0, 3.1, 1.9, "streams 1..K-1 =\nQ_i + e_l, e_l from\nQ_0 * s and ple_l", "#dbe9f6")
for a_ in ((1.95, 4.1, 2.45, 4.1), (4.45, 4.1, 4.95, 4.1), (6.75, 4.4, 7.35, 6.0), (6.75, 3.8, 7.35, 2.2),
           (9.85, 6.0, 10.6, 4.95), (9.85, 2.2, 10.6, 3.25), (12.65, 4.1, 13.15, 4.1), (15.55, 4.1, 16.05, 4.1),
           (18.15, 4.5, 18.65, 6.2), (18.15, 3.7, 18.65, 2.2)):
    arrow(*a_)
ax.annotate("", (10.9, 4.95), (3.4, 4.95), arrowprops=dict(arrowstyle="-|>", color="#756bb1", lw=1.1,
                                                            connectionstyle="arc3,rad=-0.6"))
ax.text(5.2, 7.9, "a (the residual)", color="#756bb1", fontsize=8.5)
ax.annotate("", (16.5, 3.25), (3.6, 3.25), arrowprops=dict(arrowstyle="-|>", color="#756bb1", lw=1.1,
                                                            connectionstyle="arc3,rad=0.45"))
ax.text(9.5, -0.3, "predictions P (all K streams)", color="#756bb1", fontsize=8.5)
show(fig)
'''),
    code(r'''
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
    md(r'''
## The whole model

The fixture's weights (HF names, `Gemma3nForCausalLM` layout) go into a temporary checkpoint directory,
which `load_text_model` opens like any other. Tolerance on logits: 1e-4 in float32 (identical argmax), 1e-10
in float64.
'''),
    code(r'''
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
    md(r'''
**Trap: stream 0 never receives the per-layer input.** Adding `e` to all K streams (or to stream 0 only)
is an easy slip; the reference adds it to streams 1..K-1 only, and feeds the gate with the *scaled* copy
`Q_0 * correct_output_scale`, which goes nowhere else. The layer check above catches either slip.

## Trace and compare: finding the first module where two implementations part

`forward(..., trace={})` records every module's output under the reference's module name (a forward hook
on the reference gives the same array). The fixture holds the lifted float64 reference's hooks:
'''),
    code(r'''
trace = {}
decoder.forward(decoder.load_text_model(tmp, np.float64), ids, attention_mask=real, trace=trace)
want = {k[len("trace."):]: v for k, v in gm.out64.items() if k.startswith("trace.")}
errs = {k: rel_err(trace[k], want[k]) for k in want}
worst = max(errs, key=errs.get)
print(f"{len(errs)} traced modules; first names: {list(trace)[:3]}")
print(f"worst: {worst} rel err {errs[worst]:.2e}")
assert errs[worst] <= 1e-10
'''),
    md(r'''
To check *your* port, dump the same names from it and run `minig3n compare ref.safetensors yours.safetensors`
(`minig3n trace` writes minig3n's side). Here a "port" with one weight off by 0.1 % in layer 3's
`down_proj`: everything before layer 3's MLP agrees, and compare names the culprit.
'''),
    code(r'''
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
    md(r'''
## The logit lens on the trained nano

What would the nano predict if it stopped after layer l? Collapse the streams after layer l, apply the
final norm, the tied head and the softcap, and score the next token of a line of *Hamlet*. Before any layer
('emb') the tied head mostly echoes the input token, worse than a unigram guess; layer 0 does most of the
work, the later layers refine.
'''),
    code(NANO_LINE),
    code(r'''
from minig3n import altup
from minig3n.ops import linear, rms_norm, softcap

root, ncfg = nano.params(), nano.cfg
after = [altup.make_streams(line_trace[X + ".embed_tokens"][None], root, ncfg)[:, 0]] + \
        [line_trace[f"{X}.layers.{l}"] for l in range(ncfg.num_hidden_layers)]          # [K, T, D] each
losses, tops = [], []
for S in after:
    hid = rms_norm(altup.collapse_streams(S[:, None], root, ncfg), root["norm.weight"], ncfg.rms_norm_eps)
    z = softcap(linear(hid, root["embed_tokens.weight"]), ncfg.final_logit_softcapping)[0]  # [T, V]
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    losses.append(float(-np.mean(logp[np.arange(len(pieces) - 1), line_ids[0, 1:]])))
    tops.append(z.argmax(-1))
assert np.allclose(z, line_logits[0], atol=1e-4)                      # after the last layer: the model's logits
fig, ax = plt.subplots(figsize=(6.5, 3))
ax.plot(range(len(losses)), losses, "o-")
ax.set(xticks=range(len(losses)), xticklabels=["emb"] + [str(l) for l in range(ncfg.num_hidden_layers)],
       xlabel="stop after layer", ylabel="next-token loss (nats)", title="logit lens, nano-gemma3n")
show(fig)
print("loss after emb, layers 0..5:", [round(x, 2) for x in losses], "| unigram baseline on held-out text: 6.26")
for l in (0, 2, ncfg.num_hidden_layers):
    print(f"after {'emb' if l == 0 else 'layer ' + str(l - 1):9s}:", "".join(nano_tok.decode([int(i)]) for i in tops[l][:14]).replace("\n", "|"))
'''),
    md(r'''
## Where a port parts from the reference, drawn

The same 0.1 % error in layer 3's `down_proj` as above, but every traced module's relative error plotted
in trace order: exactly zero up to layer 3's MLP, then a jump, carried to the logits.
'''),
    code(r'''
import tempfile

bad_dir = Path(tempfile.mkdtemp(prefix="walkthrough_"))
save_safetensors(bad_dir / "model.safetensors", bad)
(bad_dir / "config.json").write_text(json.dumps({**gm.meta["config"], "model_type": "gemma3n_text"}))
good_dir = Path(tempfile.mkdtemp(prefix="walkthrough_"))
save_safetensors(good_dir / "model.safetensors", {k: np.asarray(v, np.float32) for k, v in gm.weights.items()})
(good_dir / "config.json").write_text((bad_dir / "config.json").read_text())
t_good = trace_text(decoder.load_text_model(good_dir, np.float64), seq)
t_bad = trace_text(decoder.load_text_model(bad_dir, np.float64), seq)
names_ = list(t_good)
errs_ = [rel_err(t_bad[n], t_good[n]) for n in names_]
first = next(i for i, e in enumerate(errs_) if e > 1e-10)
fig, ax = plt.subplots(figsize=(11, 3))
ax.semilogy(range(len(errs_)), np.maximum(errs_, 1e-18), ".-", lw=0.8)
ax.axvline(first, color="#e6550d", ls=":"); ax.text(first + 1, 1e-14, names_[first], color="#e6550d", fontsize=8.5)
ax.axhline(1e-10, color="0.6", ls="--", lw=0.8); ax.text(1, 2e-10, "tolerance 1e-10", fontsize=8, color="0.4")
ax.set(xlabel="traced module (in forward order)", ylabel="rel err (0 shown as 1e-18)", ylim=(1e-19, 1))
show(fig)
print("first module above 1e-10:", names_[first])
shutil.rmtree(bad_dir); shutil.rmtree(good_dir)
'''),
    poke(
        "Put the per-layer input into stream 0 too (edit a copy of `decoder_layer`) and see which traced module `compare` names first.",
        "Plot the logit lens per token: which tokens are already right after layer 0?",
        "Use `minig3n trace` on the nano from the command line and `minig3n compare` two dtypes (float32 vs float64): what relative error do you expect?",
    ),
    questions(
        ("Why does the plot above show exactly 0 error before layer 3's MLP, not 1e-16?",
         "Both runs compute the same float64 operations on bit-identical inputs and weights up to there; "
         "round-off is deterministic, so the results are bit-identical."),
        ("Before any layer the loss is worse than a unigram model's (6.26 nats). Why, and what does layer 0 add?",
         "With a tied head, $\\mathrm{norm}(E[x_t])\\,E^\\top$ is largest at (or near) $x_t$ itself: the "
         "'prediction' echoes the input token, which is rarely the next one. Layer 0's attention reads the "
         "previous tokens and its MLP maps the result towards likely continuations: most of the drop."),
        ("What does the softcap do to a logit of 5? Of 60?",
         "$30\\tanh(5/30) = 4.95$: almost nothing. $30\\tanh(2) = 28.9$: large logits are squashed below 30."),
    ),
    exercise(r'''
Implement `per_layer_input_branch`, `decoder_layer` and `forward` in your own `decoder.py` (import the
pieces from minig3n or from your own modules, with absolute imports). Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m text -k decoder_layer
    MINIG3N_STUDENT=path/to/your_dir pytest tests/test_text_model.py

(`test_text_model.py` also grades `load_text_model` and, through `kv_cache.py`, the cache of chapter 08.)
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["08_generation"] = [
    md(r'''
# 08 · Generation: tokenizer, chat template, KV cache, sampling

From a prompt string to streamed text:

1. **Tokenizer** (`minig3n/tokenizer.py`): Gemma's sentencepiece BPE with byte fallback; special-token
   strings written in the text (`<start_of_turn>`) become their ids; `<bos>` first.
2. **Chat template** (`minig3n/chat.py`): turns of `<start_of_turn>ROLE\n ... <end_of_turn>\n`, the
   system message folded into the first user turn, an open `<start_of_turn>model\n` at the end.
3. **Prefill and decode** (`minig3n/generate.py`, `minig3n/kv_cache.py`): one forward pass over the prompt
   fills a `KVCache`; then one token per call. Full layers keep every key, sliding layers the last
   `window - 1`, KV-shared layers nothing. The cache is an immutable value: `forward` returns a new one.
4. **Sampling** (`minig3n/sampling.py`): greedy, or temperature -> top-k -> top-p -> one seeded draw.

The maths of one step, from the last hidden state $h_T$ to the next token:

$$z = 30\tanh\!\Big(\frac{h_T E^\top}{30}\Big),\qquad p_i \propto \exp(z_i/\tau)\ \text{ over }\
\mathcal{K} = \text{top-}k(z) \cap \Big\{ i : \sum_{j \prec i} p_j < p_{\text{top}} \Big\},\qquad x_{T+1} \sim p,$$

($j \prec i$: tokens ranked before i). $\tau \to 0$ is greedy; $\tau > 1$ flattens $p$; top-p keeps the
smallest head of the ranking whose mass reaches $p_{\text{top}}$.

Fixtures: `generation_tokenizer`, `generation_chat`, `generation_greedy` (the reference's
`generate(do_sample=False)` tokens on the tiny checkpoint).

**Shapes.** prompt ids [1, T]; prefill logits [1, T, V] (or [1, 1, V] with `logits_to_keep=1`); decode
step [1, 1] -> [1, 1, V]; the cache per layer k, v [B, S_l, G, E].
'''),
    source(r'''
`Gemma3nForCausalLM.generate` / `GenerationMixin` (transformers v5.24.0,
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)),
the chat format of the [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n), nucleus sampling
[Holtzman et al. 2019, arXiv 1904.09751](https://arxiv.org/abs/1904.09751).
'''),
    code(SETUP),
    code(r'''
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
    code(r'''
from minig3n.chat import encode_chat, render_chat

gc = load_golden("generation_chat").meta
for conv, prompt, ids in zip(gc["conversations"], gc["prompts"], gc["ids"]):
    assert render_chat(conv) == prompt
    assert encode_chat(tok, conv) == ids
print(repr(render_chat(gc["conversations"][1])))
'''),
    md(r'''
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
    code(r'''
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
    code(r'''
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
    md(r'''
The nano's cache while it writes: prefill 20 tokens, then 100 decode steps. Full layers (2) keep every key;
sliding layers (0, 1) at most `window - 1` = 63; the KV-shared layers (3, 4, 5) nothing.
'''),
    code(r'''
from minig3n.decoder import load_text_model

NANO = ROOT / "@TEXT_MODEL@"
nm = load_text_model(NANO, np.float32)
c = KVCache.empty(nm.cfg, 1, np.float32)
ids_ = np.asarray([Tokenizer.from_dir(NANO).encode("ROMEO.\nWhat light through yonder window breaks?")[:20]])
held = []
while c.length < 120:
    lg, c = decoder.forward(nm, ids_, cache=c, logits_to_keep=1)
    held.append([0 if k is None else k.shape[1] for k in c.keys])
    ids_ = np.asarray([[sampling.greedy(lg[0, -1])]])
held = np.array(held)
fig, ax = plt.subplots(figsize=(7.5, 3))
steps = 20 + np.arange(len(held))
for i, lt in enumerate(nm.cfg.layer_types):
    ax.plot(steps, held[:, i] + 0.8 * i, label=f"layer {i} ({lt.split('_')[0]}{', shared' if held[-1, i] == 0 else ''})")
ax.set(xlabel="tokens so far", ylabel="keys held (offset for legibility)", title="KV cache per layer")
ax.legend(fontsize=7.5); show(fig)
print("keys held at the end:", held[-1].tolist(), f"| {c.nbytes:,} bytes")
'''),
    md(r'''
## Sampling, derived by hand

Logits [2, 1, 0, -1]. Softmax: [0.644, 0.237, 0.087, 0.032]. **top-k = 2** keeps the two largest and
renormalises: [e^2, e^1] / (e^2 + e^1) = [0.731, 0.269, 0, 0]. **top-p = 0.7** keeps a token while the
probability ranked *before* it is still < 0.7: token 0 (0) and token 1 (0.644) stay, token 2 (0.881) goes:
the same two tokens.
'''),
    code(r'''
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
    md(r'''
## Logits, the softcap, and sampling on the trained nano

The nano's logits for the token after `ROMEO.\n` (raw, before the softcap, and after), and the next-token
distribution under three temperatures, with the set top-p = 0.9 keeps. The nano's logits stay below 10,
where the cap is almost the identity: it matters for the large outlier logits of big models.
'''),
    code(r'''
from minig3n import decoder as dec
from minig3n.ops import softcap
from minig3n.tokenizer import Tokenizer

NANO = ROOT / "@TEXT_MODEL@"
nano, ntok = dec.load_text_model(NANO, np.float32), Tokenizer.from_dir(NANO)
tr = {}
z_capped, _ = dec.forward(nano, np.asarray([ntok.encode("ROMEO.\n")]), trace=tr)
raw, z = tr["lm_head"][-1], z_capped[0, -1]                                # [V] before / after the softcap
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.2))
xs = np.linspace(-80, 80, 400)
a1.plot(xs, xs, color="0.7", ls=":", label="identity")
a1.plot(xs, softcap(xs, 30.0), color="#3182bd", lw=2, label="30 tanh(x / 30)")
a1.set(xlabel="raw logit", ylabel="capped logit", title="the final softcap", ylim=(-35, 35)); a1.legend(fontsize=8)
a2.hist(raw, bins=80, color="#9ecae1", label="raw (lm_head)")
a2.hist(z, bins=80, histtype="step", color="#e6550d", label="after softcap")
a2.set(xlabel="logit", ylabel="tokens", title=f"nano's {len(z)} logits after 'ROMEO.\\n'", yscale="log"); a2.legend(fontsize=8)
show(fig)
print(f"largest raw logit {raw.max():.2f} -> capped {z.max():.2f}")

order = np.argsort(-z)[:20]
labels = [repr(ntok.id_to_piece(int(i)))[1:-1] for i in order]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
for ax, tau in zip(axes, (0.5, 1.0, 1.5)):
    p_all = probabilities(z, SamplingParams(tau))
    p_top = probabilities(z, SamplingParams(tau, top_p=0.9))
    ax.bar(range(20), p_all[order], color="#c6dbef", label="temperature only")
    ax.bar(range(20), p_top[order], color="#3182bd", width=0.45, label="with top-p 0.9")
    ax.set_title(f"tau = {tau}: top-p keeps {int((p_top > 0).sum())} tokens")
    ax.set_xticks(range(20), labels, rotation=90, fontsize=7)
axes[0].set_ylabel("probability"); axes[0].legend(fontsize=7.5)
show(fig)
'''),
    md(r'''
## The Python API, streaming

`minig3n.generate.generate(model_dir, prompt, ...)` yields `(token, text piece)` as it goes (the
command line: `minig3n generate --model DIR --prompt ...`). With the trained `weights/nano-gemma3n`
(Shakespeare) the text is readable; the random tiny checkpoint babbles.
'''),
    code(r'''
from minig3n.generate import generate

NANO = ROOT / "weights" / "nano-gemma3n"
model_dir = NANO if (NANO / "config.json").exists() and (NANO / "model.safetensors").exists() else TINY
prompt = "ROMEO:" if model_dir == NANO else "Per-layer embeddings"
pieces = list(generate(model_dir, prompt, max_new_tokens=24))
print(f"[{model_dir.name}] {prompt}" + "".join(piece for _, piece in pieces))
again = list(generate(model_dir, prompt, max_new_tokens=24))
assert again == pieces                                                   # greedy: deterministic
'''),
    poke(
        "Sample the nano at temperature 0.7, 1.0 and 1.3 with a fixed seed (`minig3n generate --temperature ... --seed 0`) and read the text.",
        "Remove the softcap (set `final_logit_softcapping` to null in a copy of the nano's config): does the greedy text change? Why, or why not?",
        "Time prefill against decode for a 100-token prompt (outside this notebook: timings do not belong in committed outputs).",
    ),
    questions(
        ("Does the softcap ever change the greedy token?",
         "No: $30\\tanh(x/30)$ is strictly increasing, so the argmax is the same. It changes probabilities "
         "(the capped logits are closer together), hence sampling."),
        ("Why does a sliding layer's cache hold `window - 1` keys and not `window`?",
         "The window includes the query itself: the new token's key is computed in the step and appended; "
         "the W - 1 previous ones are all that must be kept."),
        ("top-k = 1 and temperature 0: same result?",
         "Yes: both pick the most likely token (the tests check it). With top-k = 1 the distribution has one "
         "token of probability 1 whatever the temperature."),
    ),
    exercise(r'''
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
    md(r'''
# 09 · Audio: log-mel features and the USM encoder

**Features** (`minig3n/features.py`, docs/NUMERICS.md §2.1): 16 kHz samples, windows of 512 every 160 samples
(10 ms), HTK pre-emphasis *inside each window*, periodic Hann, FFT of 1024 points, **magnitude** (not
power), 128 HTK mel filters 125-7600 Hz, `ln(max(mel, 1e-5))`. A batch is zero-padded to a multiple of 128
samples; a frame is valid iff its **first** sample is real. For frame f with samples $x_{f,0..511}$:

$$y_{n} = \begin{cases} (1 - 0.97)\,x_{f,0} & n = 0\\ x_{f,n} - 0.97\,x_{f,n-1} & n \ge 1\end{cases},\qquad
S_{f,q} = \Big|\sum_{n<512} w_n\, y_n\, e^{-2\pi i\, q n / 1024}\Big|,\qquad
F_{f,m} = \ln\max\Big(\sum_q S_{f,q}\, M_{q,m},\ 10^{-5}\Big),$$

with $w$ the periodic Hann window and $M$ the triangular mel filters, spaced evenly on
$\mathrm{mel}(f) = 2595 \log_{10}(1 + f/700)$.

**Intuition.** The mel scale spends filters where hearing resolves pitch (narrow at low frequencies, wide at
high ones); the log compresses loudness. The encoder then sees an image: time x 128 mel bins.

**USM encoder** (`minig3n/usm.py`, §2.2-2.6): two stride-2 convs with a *cumulative* group norm (time /4,
mel 128 -> 32), 12 Conformer blocks (half-step FFW, local attention over the 12 previous frames + itself
with relative positions and a tanh cap 50, a light causal conv, half-step FFW, norm), then every 4th frame:
one vector per 160 ms.

**Embedder** (`minig3n/embedder.py`, §2.7): `RMSNorm_noW(RMSNorm_soft(x) W^T)` into the text width.

Fixtures: `audio_features`, `audio_encoder_tiny`, `audio_embedder`.

**Shapes.** waveform [A] -> features [F, 128] (F = (A_padded - 513) // 160 + 1) -> subsampling [F/4, 32 x C]
-> conformer [F/4, D_a] -> every 4th frame [F/16, D_a] -> embedder [F/16, D] (188 tokens for 30 s).
'''),
    source(r'''
USM: [Zhang et al. 2023, *Google USM*, arXiv 2303.01037](https://arxiv.org/abs/2303.01037) · Conformer:
[Gulati et al. 2020, arXiv 2005.08100](https://arxiv.org/abs/2005.08100) · the reference's
`Gemma3nAudioFeatureExtractor`
([`feature_extraction_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/feature_extraction_gemma3n.py))
and `Gemma3nAudioEncoder`
([`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)),
v5.24.0 · [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    md(r'''
## A spoken clip

`walkthrough/assets/spoken_digits.wav`: "three, one, four, one, five", synthesised with espeak-ng and
resampled to 16 kHz (`walkthrough/assets/make_assets.py`). Its waveform, and the log-mel features minig3n
computes from it (one column per 10 ms):
'''),
    code(r'''
from minig3n import features
from minig3n.audio_io import load_audio

wave_ = load_audio(ROOT / "walkthrough" / "assets" / "spoken_digits.wav")           # [A] float32, 16 kHz
clip, clip_valid = features.extract_features([wave_])                               # [1, F, 128], [1, F]
print(f"{len(wave_)} samples = {len(wave_) / 16000:.2f} s -> features {clip.shape}, valid frames {clip_valid.sum()}")
fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5), sharex=True, gridspec_kw=dict(height_ratios=[1, 2.2]))
a1.plot(np.arange(len(wave_)) / 16000, wave_, lw=0.4, color="0.3"); a1.set(ylabel="amplitude", title="waveform")
F_ = clip.shape[1]
im = a2.imshow(clip[0].T, origin="lower", aspect="auto", cmap="magma", extent=(0, F_ * 0.01, 0, 128))
a2.set(xlabel="time (s)", ylabel="mel bin", title="log-mel features (ln of magnitude)")
fig.colorbar(im, ax=[a1, a2], pad=0.01, shrink=0.6)
show(fig)
'''),
    code(r'''
fb = features.mel_filterbank()                                                     # [513, 128]
hz = np.arange(fb.shape[0]) * 16000 / 1024
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.2))
for m in range(0, 128, 6):
    a1.plot(hz, fb[:, m], lw=0.9)
a1.set(xlabel="frequency (Hz)", ylabel="weight", title="every 6th of the 128 HTK mel filters (125-7600 Hz)")
a2.imshow(fb.T, origin="lower", aspect="auto", cmap="Greys", extent=(0, 8000, 0, 128))
a2.set(xlabel="frequency (Hz)", ylabel="mel bin", title="the filterbank M [513 x 128]")
show(fig)
print("filter width (FFT bins with weight > 0): first", int((fb[:, 0] > 0).sum()), "| last", int((fb[:, -1] > 0).sum()))
'''),
    md(r'''
## A held-out spoken digit through the trained audio tower

`@MM_MODEL@` (`MM_MODEL` in `walkthrough/_chapters.py`; its model card, `README.md` there) is trained to
answer "Which digit was spoken?" about one spoken digit word. Its 16 audio soft tokens hold 2.56 s, so the
five-word clip above is too long for it (minig3n refuses it, naming the limit); it hears one of its committed
held-out clips instead: an espeak-ng voice, noise at 20 dB SNR, a seed the training never used. 4x fewer
frames after the subsampling convolutions, 4x fewer again after the conformer (one vector per 160 ms), then
padded to the 16 audio tokens with the embedding of the padding id. The decoder reads those tokens and
answers with the digit.
'''),
    code(r'''
import json

from minig3n import multimodal, usm
from minig3n.generate import generate

MM = ROOT / "@MM_MODEL@"
mm = multimodal.load_multimodal_model(MM, np.float32)
held = json.loads((MM / "heldout" / "labels.json").read_text())["files"]
name = "audio_00.wav"
heard = load_audio(MM / "heldout" / name)                                          # [A] float32, 16 kHz
hclip, hvalid = features.extract_features([heard])                                  # [1, F, 128], [1, F]
enc, enc_invalid = usm.audio_encoder(hclip, ~hvalid, mm.ckpt.params("model.audio_tower"), mm.cfg.audio)
tokens = multimodal.audio_features(mm, hclip, hvalid)                               # [1, 16, D]
print(f"{MM.name}, {name} ({len(heard) / 16000:.2f} s; voice, speed, pitch: {held[name]['desc']}): features "
      f"{hclip.shape[1]} frames -> encoder {enc.shape} -> audio tokens {tokens.shape}")
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), gridspec_kw=dict(width_ratios=[1.6, 2, 1, 1.2], wspace=0.35))
axes[0].plot(np.arange(len(heard)) / 16000, heard, lw=0.4, color="0.3"); axes[0].set(title="waveform", xlabel="time (s)")
axes[1].imshow(hclip[0].T, origin="lower", aspect="auto", cmap="magma"); axes[1].set(title=f"features: {hclip.shape[1]} frames", xlabel="frame", ylabel="mel bin")
axes[2].imshow(enc[0].T, origin="lower", aspect="auto", cmap="RdBu_r"); axes[2].set(title=f"encoder {enc.shape[1]} x {enc.shape[2]}", xlabel="frame (160 ms)", ylabel="channel")
n_real = enc.shape[1]
axes[3].imshow(tokens[0, :, :48].T, origin="lower", aspect="auto", cmap="RdBu_r")
axes[3].axvline(n_real - 0.5, color="k", lw=1)
axes[3].set(title=f"{tokens.shape[1]} audio tokens", xlabel="audio token (padding right of |)", ylabel="dim (first 48)")
show(fig)
answer = "".join(piece for _, piece in generate(MM, chat="Which digit was spoken?", audio=[str(MM / "heldout" / name)],
                                                max_new_tokens=4))
print(f"spoken digit {held[name]['digit']} -> the model answers {answer!r}")
assert answer == str(held[name]["digit"])
'''),
    md(r'''
How often it is right: the model card's held-out figures (`heldout_eval.json`: 10 fresh clips of every
digit, asked through minig3n's generator greedily, as `minig3n generate --chat ... --audio X` does), as a
confusion matrix (rows: the spoken digit, columns: the answer):
'''),
    code(r'''
ev = json.loads((MM / "heldout_eval.json").read_text())["audio"]
conf = np.asarray(ev["confusion"])                                                  # [10, 11]: digits, then "other"
fig, ax = plt.subplots(figsize=(4.6, 4))
ax.imshow(conf, cmap="Blues")
for r, c in zip(*np.nonzero(conf)):
    ax.text(c, r, conf[r, c], ha="center", va="center", fontsize=8, color="w" if conf[r, c] > 5 else "k")
ax.set(xticks=range(11), xticklabels=[*map(str, range(10)), "other"], yticks=range(10), xlabel="answer",
       ylabel="spoken digit", title=f"{MM.name}: {ev['correct']}/{ev['n']} spoken digits right (seed {json.loads((MM / 'heldout_eval.json').read_text())['seed']})")
show(fig)
'''),
    md(r'''
## Against the reference
'''),
    code(r'''
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
    code(r'''
w = features.hann_window()
print("Hann: periodic, w[0] =", w[0], " w[256] =", w[256], " w[511] =", round(float(w[511]), 6))
assert w[0] == 0 and w[256] == 1 and w[511] > 0              # a symmetric window would end in 0
silence, _ = features.extract_features([np.zeros(2000, np.float32)])
print("silence ->", silence[0, 0, 0], "= ln(1e-5) everywhere")
assert np.allclose(silence, np.log(np.float32(1e-5)))
'''),
    md(r'''
**Trap: the mask flips meaning.** `extract_features` returns True = *valid* frame (the feature
extractor's `input_features_mask`); inside the encoder the mask is True = *padded* (`audio_mel_mask`).
`Gemma3nModel` inverts it. The fixture below feeds the encoder its own convention.
'''),
    code(r'''
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
    md(r'''
**Trap: the cumulative group norm's variance.** Each past step's squares are taken around *that step's*
running mean, not the current one (so it is not the textbook running variance), with eps 1e-3 and a
float64 cumsum (torch's CPU cumsum of float32 accumulates in float64). The textbook version differs:
'''),
    code(r'''
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
    code(r'''
from minig3n import embedder

ge = load_golden("audio_embedder")
for dt, out, tol in MODES:
    p = {k: v.astype(dt) for k, v in ge.weights.items()}
    check(f"embed_soft ({np.dtype(dt).name})", embedder.embed_soft(ge.inputs["soft"].astype(dt), p, ge.meta["eps"]),
          getattr(ge, out)["soft"], tol)
    ids = ge.inputs["ids"].astype(np.int64) - ge.meta["vocab_offset"]
    check(f"embed_hard ({np.dtype(dt).name})", embedder.embed_hard(ids, p, ge.meta["eps"]), getattr(ge, out)["hard"], tol)
'''),
    poke(
        "Record yourself (16 kHz mono WAV, or any rate: `load_audio` resamples) and plot its log-mel features next to the synthetic clip's.",
        "Switch the pre-emphasis off (coefficient 0 in a copy of `log_mel`): which part of the spectrogram changes?",
        "How many audio tokens does a 2.5 s clip give? Check with `multimodal.audio_features` and with the formula.",
    ),
    questions(
        ("Why magnitude and not power (|X| rather than |X|^2)?",
         "It is the reference's choice (the features USM was trained on). Power would not be a simple rescaling: "
         "the mel filters sum the spectrum *before* the log, and a sum of squares is not the square of a sum."),
        ("Why is a frame valid only if its *first* sample is real?",
         "That is the reference's rule (its mask subsamples the sample mask at the frame starts); a frame "
         "that starts inside the clip but runs into the padding still counts as real."),
        ("How long a clip fills exactly the 188 audio tokens?",
         "188 tokens x 160 ms = 30.08 s; clips longer than 30 s must be cut (the processor does, the model "
         "refuses more than 188)."),
    ),
    exercise(r'''
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
    md(r'''
# 10 · MatFormer: smaller models cut out of E4B

E4B is a MatFormer ([Devvrit et al. 2023, *MatFormer: Nested Transformer for Elastic Inference*](https://arxiv.org/abs/2310.07707)):
during training, sub-networks that use only a **prefix** of each FFN's hidden units were optimised together
with the full network, so a prefix is itself a trained network. With $d \le I$ units kept,

$$\mathrm{mlp}_d(x) = W_{\text{down}}[:, :d]\,\Big(\mathrm{GELU}\big(W_{\text{gate}}[:d]\,x\big) \odot W_{\text{up}}[:d]\,x\Big),
\qquad \text{training loss } \textstyle\sum_{d \in \{d_1 < \dots < d_g\}} \mathcal{L}(\mathrm{model}_d).$$

E2B is E4B with 8192-wide FFNs and layers 20-24 left out; "mix-n-match" picks a width per layer and skips
layers.

**Intuition.** Like Russian dolls: the first units of every FFN are trained to work alone, the next ones to
refine them. One training run gives a family of models; you pick the size that fits your device.

**Trap: KV sharing constrains skipping.** A layer whose K/V a kept shared layer reuses (E4B: 18 and 19)
cannot be skipped. **Trap: PLE is per layer**: skipping layer l removes its P columns of the PLE table and
P rows of `per_layer_model_projection` (chapter 02's layer-major layout).

Module: `minig3n/matformer.py`. Expected numbers: Google's MatFormer Lab notebook.

**Shapes.** per kept layer l: `gate_proj`, `up_proj` [I, D] -> [d_l, D]; `down_proj` [D, I] -> [D, d_l];
skipping layer l removes its tensors, P columns of `embed_tokens_per_layer` [U, L·P] and P rows of
`per_layer_model_projection` [L·P, D].
'''),
    source(r'''
[MatFormer, arXiv 2310.07707](https://arxiv.org/abs/2310.07707) · the
[Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n) (MatFormer, "mix-n-match") · the
published slicing table `configs.csv` of the dataset
[google/gemma3n-slicing-configs](https://huggingface.co/datasets/google/gemma3n-slicing-configs), copied
verbatim into `minig3n/matformer.py` (`PUBLISHED_CSV`).
'''),
    code(SETUP),
    code(r'''
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
    md(r'''
## The published table as a picture

Google's 16 configurations: effective parameters (Google's numbers, and minig3n's count from each row's
widths and skipped layers) against MMLU. Below, what each row keeps: the FFN width of each of E4B's 35
layers.
'''),
    code(r'''
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw=dict(width_ratios=[1, 1.25]))
mine = [matformer.count_config(matformer.slice_config(e4b_config(), matformer.SliceSpec.from_published(r))).effective / 1e9
        for r in table]
for kind, marker, color in (("layer-level", "o", "#3182bd"), ("block-level", "s", "#e6550d"), ("", "*", "k")):
    rows_ = [i for i, r in enumerate(table) if (kind in r.name if kind else "layer-level" not in r.name and "block-level" not in r.name)]
    a1.scatter([table[i].effective_params_b for i in rows_], [table[i].mmlu for i in rows_], marker=marker, color=color,
               s=60 if marker == "*" else 30, label=kind or "E4B / official E2B", zorder=3)
a1.scatter(mine, [r.mmlu for r in table], marker="x", color="0.3", s=18, label="minig3n's count", zorder=4)
a1.set(xlabel="effective parameters (B)", ylabel="MMLU, pretrained (%)", title="Google's MatFormer table")
a1.legend(fontsize=7.5)
L4 = e4b_config().text.num_hidden_layers
grid = np.full((len(table), L4), np.nan)
for i, r in enumerate(table):
    kept = [l for l in range(L4) if l not in r.skip_layers]
    grid[i, kept] = np.array(r.ffn_dims) / 1024
im = a2.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
a2.set_yticks(range(len(table)), [r.name.replace("Config for ", "") for r in table], fontsize=7)
a2.set(xlabel="E4B layer (blank: skipped)", title="FFN width per layer (thousands)")
fig.colorbar(im, ax=a2, pad=0.01)
show(fig)
print("largest |Google - minig3n| effective count:", round(max(abs(r.effective_params_b - m) for r, m in zip(table, mine)), 3), "B")
'''),
    md(r'''
**Experiment: a prefix of the FFN is the FFN with the other units switched off.** Cutting the weights
to the first d units gives exactly what the full MLP gives when `down_proj`'s columns beyond d are zero.
'''),
    code(r'''
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
    code(r'''
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
    md(r'''
## Slicing a trained model, and what it costs

`@MATFORMER_MODEL@` (`MATFORMER_MODEL` in `walkthrough/_chapters.py`, nano-gemma3n fine-tuned with
MatFormer's nested loss: each step trains one sub-model, FFN prefixes of 100 %, 75 %, 50 % or 25 %) and
`@TEXT_MODEL@` (trained *without* it) cut to a fraction of every FFN, scored on the first 4 held-out
windows of the Shakespeare evaluation slice (next-token loss, nats). The model trained without the nested
loss degrades quickly; the nested-trained one degrades gracefully: that is what MatFormer is for.
'''),
    code(r'''
from minig3n.tokenizer import Tokenizer

MF = ROOT / "@MATFORMER_MODEL@"
PLAIN = ROOT / "@TEXT_MODEL@"
EVAL = MF if (MF / "eval_slice.npy").exists() else PLAIN               # held-out windows (same tokenizer)
if (EVAL / "eval_slice.npy").exists():
    windows = np.load(EVAL / "eval_slice.npy")[:4].astype(np.int64)   # [4, 129]
else:                                                                 # else: a passage in the model's own tokens
    windows = np.asarray([Tokenizer.from_dir(MF).encode(
        "HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n")])


def loss_of(model_dir):
    z, _ = decoder.forward(decoder.load_text_model(model_dir, np.float32), windows[:, :-1])       # [4, 128, V]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, windows[:, 1:, None], -1).mean())


fractions = [1.0, 0.75, 0.5, 0.25]
fig, ax = plt.subplots(figsize=(6.5, 3))
for model_dir in dict.fromkeys([PLAIN, MF]):                          # both, or one if they are the same
    full_I = decoder.load_text_model(model_dir).cfg.intermediate_size
    losses, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for f in fractions:
            spec = matformer.SliceSpec([max(8, int(round(I * f / 8)) * 8) for I in full_I], [])
            out = model_dir if f == 1.0 else matformer.slice_checkpoint(model_dir, Path(tmp) / f"cut{f}", spec)
            losses.append(loss_of(out)); sizes.append(matformer.count_checkpoint(out).effective / 1e6)
    ax.plot(sizes, losses, "o-", label=model_dir.name)
    for f, x_, y_ in zip(fractions, sizes, losses):
        ax.annotate(f"{f:.0%}", (x_, y_), textcoords="offset points", xytext=(5, 5), fontsize=8)
    print(f"{model_dir.name}: loss by FFN fraction:", {f: round(l_, 3) for f, l_ in zip(fractions, losses)})
ax.set(xlabel="effective parameters (M)", ylabel="held-out loss (nats)", title="FFN slices: nested-trained vs not")
ax.legend(fontsize=8)
show(fig)
'''),
    poke(
        "Skip a layer of the nano instead of narrowing it (`SliceSpec(None, [4])`): which costs less, skipping layer 4 or halving every FFN?",
        "Which layers of the nano can be skipped at all? (`matformer.kv_producers`)",
        "Re-plot the first figure with our count on the x axis for every row: where does it differ from Google's rounding?",
    ),
    questions(
        ("Why is a prefix of an FFN equal to the full FFN with the other units switched off?",
         "Each hidden unit i contributes $W_{\\text{down}}[:, i]\\,\\mathrm{GELU}(g_i)\\,u_i$ to the sum; "
         "removing units removes their terms, exactly what zeroing their `down_proj` columns does."),
        ("Why can E4B's layers 18 and 19 not be skipped when layers 20+ are kept?",
         "They store the K/V that the KV-shared layers (20..34) reuse; without them those layers would have "
         "nothing to attend over."),
        ("E2B is cut out of E4B. Does E2B's 'effective' count include the per-layer-embedding table?",
         "No: effective = text parameters minus the token embedding and the per-layer embeddings (1.91 B for "
         "E2B; the table alone is 2.0 B)."),
    ),
    exercise(r'''
Implement `slice_config` (with your own `plan_text_slice`), `count_config` and `slice_checkpoint` in your
own `matformer.py`; `read_published` / `find_published` if you like parsing. Graded by:

    MINIG3N_STUDENT=path/to/your_dir pytest -m matformer
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["11_vision"] = [
    md(r'''
# 11 · Vision: image preprocessing and MobileNetV5

**Preprocessing** (`minig3n/image.py`, docs/NUMERICS.md §3.1): RGB, resize to exactly 768 x 768 with PIL's
BILINEAR (aspect ratio ignored, no crop), times 1/255, **no mean/std normalisation**:
$\;x_{c,y,x} = \mathrm{bilinear}(I)_{c,y,x} / 255 \in [0, 1]$.

**MobileNetV5** (`minig3n/mobilenetv5.py`, §3.2-3.7): a conv stem, then four stages of *edge residual*,
*universal inverted residual* and *mobile multi-query attention* blocks, each described by a short timm
block string; every conv followed by an RMSNorm over channels (`x * w`) and, where stated, tanh-GELU. The
multi-scale fusion adapter (MSFA) fuses the last two stages into 2048 x 16 x 16 = **256 image tokens**.

A universal inverted residual block, the workhorse (with optional depthwise convs before and after the
expansion; $\mathrm{N}$ = RMSNorm over channels, $\mathrm{DW}_k$ a depthwise $k\times k$ conv):

$$y = x + \gamma \odot \mathrm{N}\Big(W_{\text{proj}}\,\mathrm{DW}_{k_2}\big(\mathrm{GELU}(\mathrm{N}(W_{\text{exp}}\,\mathrm{DW}_{k_1}(x)))\big)\Big)
\quad\text{(each DW optional, residual when shapes allow)}.$$

**Intuition.** Convolutions build local features cheaply at high resolution; the late stages add
multi-query attention for global context at low resolution; MSFA resizes the last two stages to one
16 x 16 grid and fuses them, so each of the 256 tokens describes one patch of the image.

Fixtures: `vision_image` (the reference's PIL backend), `vision_encoder` (a scaled-down custom spec with
every block kind, timm 1.0.31).

**Shapes.** image -> pixels [3, 768, 768] -> stem [C, 384, 384] -> stages at /4, /8, /16, /32 ->
MSFA [2048, 16, 16] -> tokens [256, 2048] -> `embed_vision` [256, D].
'''),
    source(r'''
MobileNetV4: [Qin et al. 2024, arXiv 2404.10518](https://arxiv.org/abs/2404.10518) (UIR and mobile MQA
blocks; MobileNetV5 is its Gemma 3n successor, described only by code) · timm's
[`mobilenetv5.py`](https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/mobilenetv5.py)
(v1.0.31) · the reference's `Gemma3nImageProcessor` (SigLIP processor, PIL backend) and
`Gemma3nMultimodalEmbedder` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py)
(v5.24.0) · [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    md(r'''
## A photo through the preprocessing

The photo is matplotlib's bundled sample `grace_hopper.jpg` (Commodore Grace Hopper, an official US Navy
photograph: public domain), read with `matplotlib.cbook.get_sample_data`. Preprocessing squashes it to a
square (the aspect ratio is ignored) at the official 768 x 768, or at the size `@MM_MODEL@` uses
(`MM_MODEL` in `walkthrough/_chapters.py`).
'''),
    code(r'''
from matplotlib.cbook import get_sample_data
from PIL import Image as PILImage

from minig3n import image
from minig3n.image import load_image_config

MM = ROOT / "@MM_MODEL@"
with get_sample_data("grace_hopper.jpg") as f:
    photo = np.asarray(PILImage.open(f).convert("RGB"))                  # [H, W, 3] uint8
px_768 = image.preprocess_image(photo)                                    # [3, 768, 768] official config
mm_cfg = load_image_config(MM)
photo_px = image.preprocess_image(photo, mm_cfg)                          # [3, h, w] for MM_MODEL
print("photo", photo.shape, "-> official", px_768.shape, f"[{px_768.min():.2f}, {px_768.max():.2f}]", "->", MM.name, photo_px.shape)
fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.2), gridspec_kw=dict(width_ratios=[photo.shape[1] / photo.shape[0], 1, 1]))
axes[0].imshow(photo); axes[0].set_title(f"original {photo.shape[1]} x {photo.shape[0]}")
axes[1].imshow(px_768.transpose(1, 2, 0)); axes[1].set_title("preprocessed 768 x 768 (squashed)")
axes[2].imshow(photo_px.transpose(1, 2, 0), interpolation="nearest"); axes[2].set_title(f"{MM.name}: {photo_px.shape[2]} x {photo_px.shape[1]}")
for ax in axes:
    ax.axis("off")
show(fig)
'''),
    md(r'''
**Trap: TensorFlow "SAME" padding.** A stride-2 conv on an even input pads **more at the bottom/right**:
`total = max((ceil(n/s) - 1) s + k - n, 0)`, `before = total // 2`. For n = 768: k3 -> (0, 1), k5 -> (1, 2).
PyTorch-style symmetric padding shifts every strided conv by one pixel (a classic porting bug).
'''),
    code(r'''
from minig3n import mobilenetv5 as mv

print("n=768 k=3 s=2:", mv.same_padding(768, 3, 2), "  k=5:", mv.same_padding(768, 5, 2),
      "  n=10 k=5 s=1:", mv.same_padding(10, 5, 1))
assert mv.same_padding(768, 3, 2) == (0, 1) and mv.same_padding(768, 5, 2) == (1, 2)

x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)                 # 0..15, row-major
w = np.ones((1, 1, 3, 3))
same = mv.conv2d(x, w, 2)[0, 0]
sym = np.array([[np.pad(x[0, 0], 1)[r:r + 3, c:c + 3].sum() for c in (0, 2)] for r in (0, 2)])
print("SAME (pads bottom/right):\n", same, "\nsymmetric padding:\n", sym)
assert same.tolist() == [[45, 39], [66, 50]] and not np.array_equal(same, sym)
'''),
    code(r'''
fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
for ax, (title, pad) in zip(axes, (("TF 'SAME': pad (0, 1)", (0, 1)), ("symmetric: pad (1, 1)", (1, 1)))):
    n = 4 + sum(pad)
    for r in range(n):
        for c in range(n):
            real = pad[0] <= r < pad[0] + 4 and pad[0] <= c < pad[0] + 4
            ax.add_patch(plt.Rectangle((c, n - 1 - r), 0.95, 0.95, fc="#c6dbef" if real else "white", ec="0.6"))
    for k, (r0, c0) in enumerate(((0, 0), (0, 2), (2, 0), (2, 2))):
        ax.add_patch(plt.Rectangle((c0 + 0.05 + 0.04 * k, n - r0 - 3 + 0.05 + 0.04 * k), 2.85, 2.85, fill=False,
                                   ec=plt.cm.tab10(k), lw=1.6))
    ax.set(xlim=(-0.2, n + 0.2), ylim=(-0.2, n + 0.2), title=title, aspect="equal"); ax.axis("off")
show(fig)
print("blue: the 4 x 4 input; white: zero padding; boxes: the 3 x 3 windows of the 2 x 2 outputs (stride 2)")
'''),
    code(r'''
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
    md(r'''
## The encoder against timm

The fixture's encoder uses every block kind at a small size (a 64 x 64 input, MSFA output 2 x 2). We run
pixels -> MSFA output and compare every traced block, then the soft tokens the language model reads:
flatten the map row-major, times sqrt(2048), then `embed_vision`'s soft path.
'''),
    code(r'''
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
    code(r'''
from minig3n import image
from tests.vision_test_images import SMALL_CONFIGS, make_images

gi = load_golden("vision_image")
pics = make_images()
for name in ("rgb_40x30", "rgba_33x47", "p_36x26"):
    px = image.preprocess_image(pics[name], SMALL_CONFIGS["bilinear"], backend="pil")   # the fixture's backend
    check(f"preprocess {name}", px, gi.out32[f"bilinear.{name}"], 1e-6)
print("pixel values", px.shape, px.dtype, "in [", px.min(), ",", px.max(), "]")
'''),
    md(r'''
## The photo through MobileNetV5

The preprocessed photo through the vision tower of `@MM_MODEL@` (trained on digit images only, so a photo is
far from anything it has seen; the shapes are what matters here): a few channels of the stem, the mean
activation magnitude after each stage (resolution halves, channels grow), and the MSFA output: one vector
per token, drawn as its norm on the token grid, then the soft tokens the language model reads.
'''),
    code(r'''
from minig3n import multimodal

mm = multimodal.load_multimodal_model(MM, np.float32)
vtr = {}
fmap = mv.vision_encoder(photo_px[None], mm.ckpt.params(mv.PREFIX), mm.cfg.vision, trace=vtr)      # [1, 2048, r, r]
soft = mv.image_soft_tokens(fmap, mm.ckpt.params("model.embed_vision"), mm.cfg.vision)        # [1, r*r, D]
stage_ends = [max((k for k in vtr if k.startswith(f"{mv.PREFIX}.blocks.{s}.")), key=lambda k: int(k.rsplit(".", 1)[1]))
              for s in range(len(mv.encoder_spec(mm.cfg.vision).stages))]
stem = vtr[f"{mv.PREFIX}.conv_stem"][0]
print("stem", stem.shape, "| stages", [vtr[k].shape[1:] for k in stage_ends], "| MSFA", fmap.shape, "| soft tokens", soft.shape)
fig, axes = plt.subplots(2, 6, figsize=(11.5, 4.4))
for i, ax in enumerate(axes[0]):
    ax.imshow(stem[i], cmap="RdBu_r"); ax.set_title(f"stem ch {i}", fontsize=8)
for ax, k in zip(axes[1], stage_ends):
    a = vtr[k][0]
    ax.imshow(np.abs(a).mean(0), cmap="magma"); ax.set_title(f"stage {k.split('.')[-2]}: {a.shape[0]}x{a.shape[1]}x{a.shape[2]}", fontsize=8)
axes[1][4].imshow(np.linalg.norm(fmap[0], axis=0), cmap="magma"); axes[1][4].set_title(f"MSFA |token| {fmap.shape[2]}x{fmap.shape[3]}", fontsize=8)
axes[1][5].imshow(soft[0, :, :64].T, aspect="auto", cmap="RdBu_r"); axes[1][5].set_title("soft tokens (64 dims)", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
show(fig)
'''),
    md(r'''
## The trained tower reads a digit

`@MM_MODEL@` answers "What digit is this?" about an image of one digit (its model card: Pillow's built-in
font, random colours either way round, rotation within +-15 degrees, pixel noise, any size). Six of its
committed held-out images (a seed the training never used), what the processor makes of them (64 x 64,
x 1/255), the mean activation magnitude after stages 0 and 1 (16 x 16 and 8 x 8: the glyph stands out
whatever its colours), and the generator's greedy answer, as `minig3n generate --chat "What digit is this?"
--image X` computes it:
'''),
    code(r'''
import json

from minig3n.generate import generate

held = json.loads((MM / "heldout" / "labels.json").read_text())["files"]
names = [n for n in sorted(held) if n.startswith("image")][:6]
fig, axes = plt.subplots(4, 6, figsize=(11.5, 7.6))
right = 0
for col, name in enumerate(names):
    pic = np.asarray(PILImage.open(MM / "heldout" / name).convert("RGB"))              # [H, W, 3] uint8
    px = image.preprocess_image(pic, mm_cfg)                                           # [3, 64, 64]
    tr = {}
    mv.vision_encoder(px[None], mm.ckpt.params(mv.PREFIX), mm.cfg.vision, trace=tr)
    answer = "".join(p for _, p in generate(MM, chat="What digit is this?", images=[str(MM / "heldout" / name)],
                                            max_new_tokens=4))
    right += answer == str(held[name]["digit"])
    axes[0, col].imshow(pic); axes[0, col].set_title(f"{name}, {pic.shape[1]} x {pic.shape[0]}\nanswer {answer!r}", fontsize=8)
    axes[1, col].imshow(px.transpose(1, 2, 0)); axes[1, col].set_title("pixel values 64 x 64", fontsize=8)
    for row, k in ((2, stage_ends[0]), (3, stage_ends[1])):
        a = tr[k][0]
        axes[row, col].imshow(np.abs(a).mean(0), cmap="magma")
        axes[row, col].set_title(f"stage {k.split('.')[-2]} {a.shape[1]}x{a.shape[2]}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
show(fig)
print("digits", [held[n]["digit"] for n in names], f"| right: {right}/{len(names)}")
'''),
    md(r'''
How often it is right: the model card's held-out figures (`heldout_eval.json`: 10 fresh images of every
digit, asked through minig3n's generator greedily), as a confusion matrix (rows: the drawn digit, columns:
the answer):
'''),
    code(r'''
ev_all = json.loads((MM / "heldout_eval.json").read_text())
ev = ev_all["image"]
conf = np.asarray(ev["confusion"])                                                  # [10, 11]: digits, then "other"
fig, ax = plt.subplots(figsize=(4.6, 4))
ax.imshow(conf, cmap="Blues")
for r, c in zip(*np.nonzero(conf)):
    ax.text(c, r, conf[r, c], ha="center", va="center", fontsize=8, color="w" if conf[r, c] > 5 else "k")
ax.set(xticks=range(11), xticklabels=[*map(str, range(10)), "other"], yticks=range(10), xlabel="answer",
       ylabel="drawn digit", title=f"{MM.name}: {ev['correct']}/{ev['n']} images right (seed {ev_all['seed']})")
show(fig)
'''),
    poke(
        "Feed the photo in at 2x its size, or flipped (`photo[:, ::-1]`): how do the MSFA token norms move?",
        "Resize with PIL's BICUBIC instead of BILINEAR and measure the pixel difference with `rel_err`.",
        "`mv.decode_block('uir_r1_a3_k5_s2_e4_c24')`: read the block string and explain every field.",
    ),
    questions(
        ("Why does a stride-2 TF-'SAME' conv on 768 pixels pad (0, 1) for k = 3, and what breaks with (1, 1)?",
         "Output size ceil(768/2) = 384 needs (384 - 1) * 2 + 3 = 769 input pixels: 1 extra, put after. With "
         "(1, 1) every window starts one pixel earlier: all features shift by a pixel, errors of O(1)."),
        ("Why no mean/std normalisation, when the preprocessor config lists mean 0.5 and std 0.5?",
         "`do_normalize` is false in Gemma 3n's config: the values are only rescaled to [0, 1]. A port that "
         "normalises to [-1, 1] feeds the stem the wrong inputs."),
        ("How many image tokens does one image take in E2B, whatever its size?",
         "256 (a 16 x 16 MSFA grid): the image is always resized to 768 x 768 first."),
    ),
    exercise(r'''
Re-implement `same_padding`, `conv2d`, `depthwise_conv2d`, `rms_norm2d`, the three blocks and `msfa`.
Put them in `mobilenetv5.py` / `image.py` in your `MINIG3N_STUDENT` directory (ASSIGNMENTS.md), then run

    MINIG3N_STUDENT=~/my_g3n pytest tests/test_vision_encoder.py tests/test_vision_image.py
'''),
]

# ---------------------------------------------------------------------------------------------------------
CHAPTERS["12_multimodal"] = [
    md(r'''
# 12 · Multimodal: one sequence with text, images and audio

The processor (`minig3n/processor.py`) turns chat messages with image and audio parts into ids and arrays:
each image becomes `\n\n<start_of_image>` + N x `<image_soft_token>` + `<end_of_image>\n\n` (N = 256 in
E2B/E4B), each audio clip the same with 188 `<audio_soft_token>`s. The model (`minig3n/multimodal.py`,
docs/NUMERICS.md §4) then, per position:

1. `embed_tokens(id) * sqrt(D)` for every id;
2. ids from the vision offset up take the **hard** path of `embed_vision` / `embed_audio`;
3. image soft tokens are overwritten, in order, by the vision tower's tokens (chapter 11);
4. audio soft tokens by the audio tower's (chapter 09), invalid frames replaced, padded to 188 with the
   hard embedding of the last audio id;
5. PLE: the token part from the **original** ids (every id >= the PLE vocabulary -> row 0), the
   projection part from the **merged** embeddings; then the text decoder as usual, causal everywhere.

In symbols, for position t with id $x_t$ (image soft tokens numbered $j = 1, 2, \dots$ in order, likewise
audio):

$$h_t = \begin{cases} \mathrm{embed\_vision}\big(\sqrt{2048}\; v_j\big) & x_t\ \text{is the } j\text{-th image soft token}\\
\mathrm{embed\_audio}(u_j) & x_t\ \text{is the } j\text{-th audio soft token}\\
\mathrm{embed}_{\text{hard}}(x_t) & x_t \ge \text{vision offset}\\
\sqrt{D}\; E[x_t] & \text{otherwise}\end{cases}$$

with $v_j$ the MSFA tokens of the image and $u_j$ the USM frames of the clip.

**Intuition.** The decoder never knows which positions were pixels or sound: it reads one sequence of
D-wide vectors. The placeholder runs reserve the positions; the towers fill them.

**Shapes.** ids [1, T]; pixel_values [N_img, 3, 768, 768] -> [N_img, 256, D]; input_features
[N_aud, F, 128] -> [N_aud, 188, D]; inputs_embeds [1, T, D]; logits [1, T, V].

Fixture: `multimodal_conversation` (the tiny checkpoint, two images and a 0.8 s clip; logits at 43
positions and 32 greedy tokens from `Gemma3nForConditionalGeneration`).
'''),
    source(r'''
`Gemma3nModel.forward` / `get_placeholder_mask` and `Gemma3nForConditionalGeneration` in
[`modeling_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/modeling_gemma3n.py),
`Gemma3nProcessor` in
[`processing_gemma3n.py`](https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/gemma3n/processing_gemma3n.py)
(v5.24.0) · [Gemma 3n model card](https://ai.google.dev/gemma/docs/gemma-3n).
'''),
    code(SETUP),
    md(r'''
## A prompt with an image and a spoken clip, laid out

A chat turn with one of `@MM_MODEL@`'s committed held-out digit images (chapter 11), one of its held-out
spoken digits (chapter 09) and a question, through its processor (`MM_MODEL` in `walkthrough/_chapters.py`;
its image run is `image_seq_length` = 4 tokens long, 256 in E2B; its audio run `audio_seq_length` = 16, 188
in E2B). One square per token:
'''),
    code(r'''
import json

from matplotlib.colors import ListedColormap
from PIL import Image as PILImage

from minig3n import multimodal
from minig3n.processor import Processor

MM = ROOT / "@MM_MODEL@"
mmodel = multimodal.load_multimodal_model(MM, np.float32)
held = json.loads((MM / "heldout" / "labels.json").read_text())["files"]
photo = np.asarray(PILImage.open(MM / "heldout" / "image_00.png").convert("RGB"))      # a held-out digit image
clip_path = str(MM / "heldout" / "audio_00.wav")                                      # a held-out spoken digit
messages = [{"role": "user", "content": [
    {"type": "image", "image": photo},
    {"type": "audio", "audio": clip_path},
    {"type": "text", "text": "What digit is this, and which digit was spoken?"}]}]
inp = Processor.from_dir(MM).apply_chat_template(messages)
c_ = mmodel.cfg
kinds = np.zeros(inp.input_ids.shape[1], int)                                   # 0 text
kinds[np.isin(inp.input_ids[0], [c_.boi_token_id, c_.eoi_token_id])] = 1
kinds[inp.input_ids[0] == c_.image_token_id] = 2
kinds[np.isin(inp.input_ids[0], [c_.boa_token_id, c_.eoa_token_id])] = 3
kinds[inp.input_ids[0] == c_.audio_token_id] = 4
names = ["text", "<start/end_of_image>", "image soft token", "<start/end_of_audio>", "audio soft token"]
colors = ["#bdbdbd", "#e6550d", "#fdae6b", "#31a354", "#a1d99b"]
W_ = 48
T_ = len(kinds)
grid = np.full((-(-T_ // W_)) * W_, np.nan); grid[:T_] = kinds
fig, ax = plt.subplots(figsize=(11, 0.28 * len(grid) / W_ + 0.8))
ax.imshow(grid.reshape(-1, W_), cmap=ListedColormap(colors), vmin=-0.5, vmax=4.5, interpolation="nearest")
ax.set_xticks(np.arange(-0.5, W_, 1), minor=True); ax.set_yticks(np.arange(-0.5, len(grid) // W_, 1), minor=True)
ax.grid(which="minor", color="white", lw=0.6); ax.tick_params(which="both", length=0)
ax.set(xticks=[], yticks=range(len(grid) // W_), yticklabels=[f"{r * W_}" for r in range(len(grid) // W_)])
ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors], labels=names, ncol=5, fontsize=8,
          loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False)
show(fig)
print(f"{T_} tokens: {int((kinds == 2).sum())} image soft tokens, {int((kinds == 4).sum())} audio soft tokens;",
      "pixel_values", inp.pixel_values.shape, "input_features", inp.input_features.shape)
print(repr(inp.text[:60]), "...")
'''),
    md(r'''
The merge, position by position: the size of each input embedding (after the merge) and of its PLE
token part. The PLE token part is looked up from the **ids**, so all soft tokens of one kind share it, while
their embeddings come from the towers. In E2B the media ids lie beyond the PLE table and all read row 0;
`@MM_MODEL@` keeps its multimodal special tokens in the text range (its model card), so its image soft tokens
read their own id's row, and its audio soft tokens another.
'''),
    code(r'''
mtr = {}
emb = multimodal.embed_inputs(mmodel, inp.input_ids, inp.pixel_values, inp.input_features, inp.input_features_mask)
logits_mm, _ = multimodal.forward(mmodel, inp.input_ids, pixel_values=inp.pixel_values, input_features=inp.input_features,
                                  input_features_mask=inp.input_features_mask, trace=mtr)
tokpart = mtr[mmodel.text.prefix + "embed_tokens_per_layer"]                 # [T, L*P]
fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 3.8), sharex=True)
for k, (nm, c) in enumerate(zip(names, colors)):
    sel = np.flatnonzero(kinds == k)
    a1.scatter(sel, np.linalg.norm(emb[0, sel], axis=-1), s=6, color=c, label=nm)
    a2.scatter(sel, np.linalg.norm(tokpart[sel], axis=-1), s=6, color=c)
a1.set(ylabel="|merged embedding|"); a1.legend(fontsize=7, ncol=5, markerscale=2)
a2.set(ylabel="|PLE token part|", xlabel="position")
show(fig)
for tid, nm in ((c_.image_token_id, "image soft"), (c_.audio_token_id, "audio soft")):
    at = np.flatnonzero(inp.input_ids[0] == tid)
    same = bool(np.all(tokpart[at] == tokpart[at[0]]))
    differ = not np.allclose(emb[0, at[0]], emb[0, at[1]])
    print(f"{len(at)} {nm} tokens (id {tid}): one PLE token part {same}, embeddings differ {differ}")
    assert same and differ
n_beyond = int((inp.input_ids[0] >= mmodel.text.cfg.vocab_size_per_layer_input).sum())
print(f"ids beyond the PLE table ({mmodel.text.cfg.vocab_size_per_layer_input}) in this prompt: {n_beyond} | logits",
      logits_mm.shape)
'''),
    md(r'''
## The trained model answers

`@MM_MODEL@` was trained on one medium per question ("What digit is this?" after an image, "Which digit was
spoken?" after a clip; model card). The image and the clip above, each asked its own question, through
`minig3n.generate.generate` (greedy; the same path as `minig3n generate --chat Q --image X` / `--audio X`),
and the probabilities of the ten digits at the answer position, from the merged embeddings:
'''),
    code(r'''
from minig3n.generate import generate

img_path = str(MM / "heldout" / "image_00.png")
proc = Processor.from_dir(MM)
digit_ids = [proc.tokenizer.encode(str(d), add_bos=False) for d in range(10)]
assert all(len(t) == 1 for t in digit_ids)                                   # each digit is one token
digit_ids = [t[0] for t in digit_ids]
fig, axes = plt.subplots(1, 2, figsize=(10, 2.6), sharey=True)
for ax, (kind, path, question) in zip(axes, (("image", img_path, "What digit is this?"),
                                             ("audio", clip_path, "Which digit was spoken?"))):
    answer = "".join(p for _, p in generate(MM, chat=question, max_new_tokens=4,
                                            **{"images" if kind == "image" else "audio": [path]}))
    one = proc.apply_chat_template([{"role": "user", "content": [
        {"type": kind, kind: photo if kind == "image" else path}, {"type": "text", "text": question}]}])
    lg, _ = multimodal.forward(mmodel, one.input_ids, pixel_values=one.pixel_values, input_features=one.input_features,
                               input_features_mask=one.input_features_mask)
    z = lg[0, -1].astype(np.float64)
    prob = np.exp(z - z.max()); prob /= prob.sum()
    truth = held[Path(path).name]["digit"]
    ax.bar(range(10), prob[digit_ids], color=["C3" if d == truth else "0.6" for d in range(10)])
    ax.set(xticks=range(10), xlabel="digit", title=f"{kind}: {question!r} -> {answer!r} (truth {truth})")
    print(f"{kind} {Path(path).name}: truth {truth}, answer {answer!r}, p(answer) = {prob[digit_ids].max():.3f}")
    assert answer == str(truth)
axes[0].set_ylabel("probability")
show(fig)
'''),
    md(r'''
## Against the reference
'''),
    code(r'''
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
print("\n".join(strip[i:i + 100] for i in range(0, len(strip), 100)))
'''),
    code(r'''
pos = g.inputs["positions"].astype(np.int64)
for dt, out, tol in ((np.float32, "out32", 1e-4), (np.float64, "out64", 1e-10)):
    m = model if dt == np.float64 else multimodal.load_multimodal_model(TINY, dt)
    logits, _ = multimodal.forward(m, ids, pixel_values=g.inputs["pixel_values"].astype(dt),
                                   input_features=g.inputs["input_features"].astype(dt),
                                   input_features_mask=g.inputs["input_features_mask"].astype(bool))
    check(f"logits at {len(pos)} positions ({np.dtype(dt).name})", logits[0, pos], getattr(g, out)["logits"], tol)
assert (logits[0].argmax(-1) == g.out32["argmax"].astype(np.int64)).all()
'''),
    md(r'''
**Trap: the PLE token part reads the original ids.** Every image/audio id (>= the PLE vocabulary) reads
PLE row 0, so all of them share one token part, while the projection part (from the merged embeddings)
differs from one image token to the next:
'''),
    code(r'''
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
    poke(
        "Swap the image and the audio in `messages`: which positions move, and do the logits of the question change?",
        "Give two images: check that the first run of soft tokens gets the first image's tokens (`merge_embeddings` fills in order).",
        "Replace the photo by a black image: which positions of `emb` change?",
    ),
    questions(
        ("Why do the image soft tokens keep their own id in `input_ids` although their embedding is replaced?",
         "The id still decides the PLE token part (row 0 for every media id) and the placeholder mask; and "
         "a cache or a trace can still tell which positions were media."),
        ("What fills the audio positions beyond the clip's own frames?",
         "The hard embedding of the last audio id (`embed_audio` on id vocab_size - 1): a clip shorter than "
         "30 s still takes 188 positions."),
        ("Is attention bidirectional over the image tokens, as in some vision-language models?",
         "No: Gemma 3n's text decoder is causal everywhere, image positions included (docs/NUMERICS.md §4)."),
    ),
    exercise(r'''
Re-implement the merge (`merge_embeddings`, `hard_token_embeddings`, `audio_features`) and the processor's
placeholder expansion in `multimodal.py` / `processor.py` in your `MINIG3N_STUDENT` directory
(ASSIGNMENTS.md), then run

    MINIG3N_STUDENT=~/my_g3n pytest tests/test_multimodal.py
'''),
]
