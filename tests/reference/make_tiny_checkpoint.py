"""Write weights/tiny-random-gemma3n/: a tiny, random, full multimodal Gemma 3n checkpoint in Hugging Face layout.

    python -m tests.reference.make_tiny_checkpoint [OUT_DIR]

Deterministic (fixed seeds, single-threaded torch, a sentencepiece model trained with one thread): running it
twice gives identical files. Everything is written by the reference (``Gemma3nForConditionalGeneration``,
``GemmaTokenizer``, ``Gemma3nProcessor``, ``GenerationConfig`` ``save_pretrained``), except ``tokenizer.model``,
which is trained here with sentencepiece and then laid out like the official one.

What is in it
-------------
* Text decoder (``Gemma3nTextConfig``): hidden 64, 4 heads, 2 KV heads, head_dim 16, 10 layers, every 5th layer
  full attention (4 and 9), the rest sliding with window 16; ``num_kv_shared_layers`` 4, so layers 6..9 reuse K/V
  of layer 5 (sliding) and layer 4 (full): producers and consumers of both types. AltUp 4 streams, LAuReL rank 8,
  PLE width 16, activation sparsity 0.95 on layers 0..2, a different intermediate size per layer, final logit
  softcap 30, max_position_embeddings 512.
* Audio encoder (``Gemma3nAudioConfig``): 128 mel bins (the standard feature extractor), SSCP channels (8, 4),
  hidden 32, 2 conformer layers with 2 heads, the real chunk / context / reduction settings.
* Vision encoder: a small MobileNetV5 (``mobilenetv5_custom_enc``, see ``timm_custom.py``) on 128 x 128 images:
  stem 16; stage 0 ER (strided, then residual); stage 1 UIR with both depthwise convs (strided), start-only and
  mid-only; stage 2 UIR + MQA with kv stride 2; stage 3 UIR + MQA without kv stride. The MSFA fuses stage 2
  (8 x 8) and stage 3 (4 x 4, upsampled) and average-pools 8 -> 4: 16 soft tokens per image. The encoder width
  stays 2048 (timm hard-wires ``num_features = 2048`` for the MSFA output).
* Soft tokens: 16 per image (``vision_soft_tokens_per_image`` = processor ``image_seq_length``); 188 per audio
  clip, as in the real model: the feature extractor always truncates at 30 s (``max_length=480000`` is a call
  argument, not a saved setting), which gives at most 188 encoder frames, and the model pads every clip to
  ``audio_soft_tokens_per_image``, so a smaller value would break on long clips.
* Vocabulary laid out like the real one (numerics doc section 4), with Vt = 1024 text ids:
  ``[0, Vt)`` text (pad 0, eos 1, bos 2, unk 3, mask 4, [multimodal] 5, <start_of_turn> 6, <end_of_turn> 7,
  byte pieces, BPE pieces, <start_of_image> Vt-2, <start_of_audio> Vt-1), then 128 vision ids
  (<end_of_image> Vt, <image_soft_token> Vt+1, placeholders), then 128 audio ids (<end_of_audio> Vt+128,
  <audio_soft_token> Vt+129, placeholders). vocab_size = Vt + 256, vocab_size_per_layer_input = Vt.
  As in the official ``tokenizer.model`` (whose size exceeds Gemma 3's by about 256 serialized pieces), the
  256 multimodal ids are pieces of the sentencepiece model itself (user-defined pieces), so
  ``len(tokenizer) == vocab_size``; ``tokenizer_config.json`` names them through ``extra_special_tokens``
  (boi/eoi/image/boa/eoa/audio tokens), as transformers' weight converter writes it.
* ``tokenizer.model``: sentencepiece BPE with byte fallback, trained on this repository's shared docs
  (``../shared/docs/gemma3n_numerics.md``, ``../shared/docs/style.md``) and the chat template
  (``../shared/data/gemma3n_chat_template.jinja``) with Gemma's normalizer settings (identity
  normalization, no dummy prefix, no whitespace folding, split digits, whitespace-only pieces allowed).
  The reference tokenizer is built from it exactly as transformers' ``GemmaConverter`` does (vocabulary from the
  pieces, merges ranked by piece score) and saved as ``tokenizer.json``.
* Weights: the reference's initialisation, except the token embedding (normal(0, 0.25), so the tied head gives
  logits of a few units and clear greedy margins) and the PLE table (normal(0, 0.1)); then every 1-D parameter
  (all norm weights, ``correct_output_scale``, ``router_norm``, layer-scale gammas, audio ``per_dim_scale``) is
  redrawn from uniform(0.5, 1.5), the vision stem's conv bias from normal(0, 0.1) (zeros in the official
  checkpoints), and the AltUp coefficient matrices and router from normal(0, 0.2) (the reference's normal(0, 0.02)
  leaves AltUp close to the identity), so no branch is degenerate. Stored as bfloat16, like the official
  checkpoints.
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "weights" / "tiny-random-gemma3n"
SHARED = Path(__file__).resolve().parents[3] / "shared"   # ../shared beside the repository
CHAT_TEMPLATE = SHARED / "data" / "gemma3n_chat_template.jinja"
CORPUS = [SHARED / "docs" / "gemma3n_numerics.md", SHARED / "docs" / "style.md", CHAT_TEMPLATE]
SEED = 20260601

VT = 1024                        # text ids [0, VT)
V = VT + 256                     # + 128 vision ids + 128 audio ids
CONTROL = ["<mask>", "[multimodal]"]                     # ids 4, 5 (after pad, eos, bos, unk)
TURN = ["<start_of_turn>", "<end_of_turn>"]              # ids 6, 7
BOI, BOA = "<start_of_image>", "<start_of_audio>"        # ids VT-2, VT-1
VISION = ["<end_of_image>", "<image_soft_token>"] + [f"<image_unused_{i}>" for i in range(126)]
AUDIO = ["<end_of_audio>", "<audio_soft_token>"] + [f"<audio_unused_{i}>" for i in range(126)]
IMAGE_SIZE = 128
IMAGE_TOKENS = 16
AUDIO_TOKENS = 188

TEXT = dict(
    vocab_size=V, vocab_size_per_layer_input=VT, hidden_size=64, hidden_size_per_layer_input=16,
    intermediate_size=[128, 96, 160, 128, 64, 192, 96, 128, 160, 112], num_hidden_layers=10,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
    layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(10)],
    num_kv_shared_layers=4, activation_sparsity_pattern=[0.95] * 3 + [0.0] * 7, laurel_rank=8,
    altup_num_inputs=4, final_logit_softcapping=30.0, max_position_embeddings=512,
    pad_token_id=0, eos_token_id=[1, 7], bos_token_id=2,
)
AUDIO_CFG = dict(
    vocab_size=128, vocab_offset=VT + 128, input_feat_size=128, hidden_size=32, conf_num_attention_heads=2,
    conf_num_hidden_layers=2, sscp_conv_channel_size=[8, 4],
)
ARCH_DEF = [
    ["er_r1_k3_s2_e4_c16", "er_r1_k3_s1_e2_c16"],
    ["uir_r1_a3_k5_s2_e4_c24", "uir_r1_a5_k0_s1_e2_c24", "uir_r1_a0_k3_s1_e2_c24"],
    ["uir_r1_a5_k5_s2_e4_c32", "mqa_r1_k3_h2_v2_s1_d8_c32", "uir_r1_a0_k0_s1_e2_c32"],
    ["uir_r1_a5_k5_s2_e4_c48", "mqa_r1_k3_h2_s1_d8_c48", "uir_r1_a0_k0_s1_e2_c48"],
]
VISION_CFG = dict(
    architecture="mobilenetv5_custom_enc",
    model_args={"arch_def": ARCH_DEF, "stem_size": 16, "msfa_output_resolution": 4},
    hidden_size=2048, vocab_size=128, vocab_offset=VT, do_pooling=False,
)


# --- sentencepiece model -----------------------------------------------------------------------------------
# sentencepiece's trainer puts user-defined pieces right after the control pieces. To lay the vocabulary out like
# the official file we edit the serialized ModelProto directly (no protobuf package needed): field 1 holds the
# pieces, each a message {1: piece (string), 2: score (float), 3: type (enum; 1 normal, 3 control, 4 user-defined,
# 6 byte)}; the other fields (trainer/normalizer specs) are copied unchanged.

from minig3n.tokenizer import _varint  # noqa: E402  (the protobuf varint reader minig3n uses too)


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        out.append(c | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(b: bytes) -> list[tuple[int, int, bytes]]:
    """Top-level (field number, wire type, raw payload including nothing of the key) of a protobuf message."""
    out, i = [], 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, j = _varint(b, i)
            out.append((num, wt, b[i:j]))
            i = j
        elif wt == 1:
            out.append((num, wt, b[i:i + 8]))
            i += 8
        elif wt == 2:
            n, i = _varint(b, i)
            out.append((num, wt, b[i:i + n]))
            i += n
        elif wt == 5:
            out.append((num, wt, b[i:i + 4]))
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wt}")
    return out


def _enc_field(num: int, wt: int, payload: bytes) -> bytes:
    key = _enc_varint((num << 3) | wt)
    return key + (_enc_varint(len(payload)) + payload if wt == 2 else payload)


def _piece(piece: str, score: float, ptype: int) -> bytes:
    msg = _enc_field(1, 2, piece.encode("utf-8")) + _enc_field(2, 5, struct.pack("<f", score))
    if ptype != 1:
        msg += _enc_field(3, 0, _enc_varint(ptype))
    return msg


def _parse_piece(msg: bytes) -> tuple[str, float, int]:
    piece, score, ptype = "", 0.0, 1
    for num, wt, payload in _fields(msg):
        if num == 1:
            piece = payload.decode("utf-8")
        elif num == 2:
            score = struct.unpack("<f", payload)[0]
        elif num == 3:
            ptype = _varint(payload, 0)[0]
    return piece, score, ptype


def train_tokenizer_model() -> bytes:
    import sentencepiece as spm

    lines = []
    for path in CORPUS:
        lines += path.read_text(encoding="utf-8").split("\n")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=VT,
        character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, add_dummy_prefix=False, normalization_rule_name="identity",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", control_symbols=CONTROL, user_defined_symbols=TURN + [BOI, BOA],
        num_threads=1, max_sentence_length=1 << 20, minloglevel=2, seed_sentencepiece_size=1_000_000,
        input_sentence_size=0, shuffle_input_sentence=False,
    )
    fields = _fields(buf.getvalue())
    pieces = [_parse_piece(p) for num, _, p in fields if num == 1]
    assert len(pieces) == VT, len(pieces)
    names = [p[0] for p in pieces]
    assert names[:8] == ["<pad>", "<eos>", "<bos>", "<unk>"] + CONTROL + TURN, names[:8]
    # move <start_of_image>, <start_of_audio> to the top of the text range, append the multimodal pieces
    moved = [p for p in pieces if p[0] not in (BOI, BOA)] + [(BOI, 0.0, 4), (BOA, 0.0, 4)]
    moved += [(name, 0.0, 4) for name in VISION + AUDIO]
    out = b"".join(_enc_field(1, 2, _piece(*p)) for p in moved)
    out += b"".join(_enc_field(num, wt, payload) for num, wt, payload in fields if num != 1)
    return out


def build_tokenizer(model_path: Path):
    """The reference tokenizer, built from tokenizer.model the way transformers' GemmaConverter does it."""
    import sentencepiece as spm
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    if "\t" not in vocab:  # GemmaConverter: old Gemma files lack a tab piece; the <0x09> byte stands in for it
        vocab["\t"] = vocab.pop("<0x09>")
        scores = [("\t", s) if p == "<0x09>" else (p, s) for p, s in scores]
    merges = generate_merges(vocab, scores)
    specials = {i: sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) in TURN + [BOI, BOA] + VISION + AUDIO}
    added = {i: AddedToken(t, special=True, normalized=False) for i, t in specials.items()}
    tok = GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
        added_tokens_decoder=added,
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": BOI, "eoi_token": "<end_of_image>",
                              "audio_token": "<audio_soft_token>", "boa_token": BOA, "eoa_token": "<end_of_audio>"},
    )
    tok.add_tokens([added[i] for i in sorted(added)], special_tokens=True)
    return tok


# --- model -------------------------------------------------------------------------------------------------

def randomize_with_margins(model, seed: int) -> None:
    """Seeded init that keeps activations lively and greedy choices clear: token embedding N(0, 0.25) (logits
    of a few units through the tied head), PLE table N(0, 0.1), vision stem bias N(0, 0.1), every 1-D weight
    uniform(0.5, 1.5) (norm scales away from 0 and 1), AltUp coefficients and router N(0, 0.2); the other
    matrices keep transformers' init, and none may be left constant. Shared with tests/reference/goldens_generation.py."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25)
            elif name.endswith("embed_tokens_per_layer.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith("conv_stem.conv.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif ".altup." in name and ("coefs" in name or "modality_router" in name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif bool((p == p.flatten()[0]).all()):
                raise AssertionError(f"{name} is constant after init; give it a random init")


def build_model():
    import torch
    from tests.reference.timm_custom import register
    register()  # registers mobilenetv5_custom_enc
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig
    from transformers import Gemma3nForConditionalGeneration

    config = Gemma3nConfig(
        text_config=Gemma3nTextConfig(**TEXT), audio_config=Gemma3nAudioConfig(**AUDIO_CFG),
        vision_config=Gemma3nVisionConfig(**VISION_CFG),
        audio_soft_tokens_per_image=AUDIO_TOKENS, vision_soft_tokens_per_image=IMAGE_TOKENS,
        boi_token_id=VT - 2, eoi_token_id=VT, image_token_id=VT + 1,
        boa_token_id=VT - 1, eoa_token_id=VT + 128, audio_token_id=VT + 129,
    )
    torch.manual_seed(SEED)
    model = Gemma3nForConditionalGeneration(config).eval()
    randomize_with_margins(model, SEED + 1)
    return model.to(torch.bfloat16)


def build_processor(tokenizer):
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    feature_extractor = Gemma3nAudioFeatureExtractor()
    image_processor = SiglipImageProcessor(
        image_seq_length=IMAGE_TOKENS, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=PILImageResampling.BILINEAR, do_normalize=False)
    return Gemma3nProcessor(feature_extractor=feature_extractor, image_processor=image_processor, tokenizer=tokenizer,
                            chat_template=CHAT_TEMPLATE.read_text(), audio_seq_length=AUDIO_TOKENS,
                            image_seq_length=IMAGE_TOKENS)


def make(out: Path = OUT) -> Path:
    import torch
    from transformers import GenerationConfig

    torch.set_num_threads(1)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "tokenizer.model").write_bytes(train_tokenizer_model())
    tokenizer = build_tokenizer(out / "tokenizer.model")
    model = build_model()
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=[1, 7], pad_token_id=0,
                                               do_sample=True, top_k=64, top_p=0.95)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    # transformers 5.24 nests the feature extractor and image processor inside processor_config.json; the official
    # checkpoints keep them (merged into one dict) in preprocessor_config.json and only the sequence lengths in
    # processor_config.json. Write the official layout (AutoProcessor reads both).
    pc = json.loads((out / "processor_config.json").read_text())
    pre = {**pc.pop("feature_extractor"), **pc.pop("image_processor"), "processor_class": pc["processor_class"]}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    (out / "processor_config.json").write_text(json.dumps(pc, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(README)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


README = """# tiny-random-gemma3n

A tiny Gemma 3n (text decoder + USM audio encoder + MobileNetV5 vision encoder) with **random weights**, written by
`tests/reference/make_tiny_checkpoint.py` through the reference's `save_pretrained`:

    python -m tests.reference.make_tiny_checkpoint

It exercises every Gemma 3n feature at toy size (see the script's docstring for the full list): 10 layers, hidden 64,
sliding window 16, KV sharing with producers of both layer types, AltUp, LAuReL, PLE, activation sparsity,
per-layer FFN widths; a 2-layer conformer; a 4-stage MobileNetV5 (ER, UIR, MQA, MSFA) on 128 x 128 images giving
16 soft tokens. Its output is gibberish by design: use it for tests, not for text.

tokenizer.model is a sentencepiece BPE model (1024 text pieces + 256 multimodal pieces, byte fallback) trained on
the project's shared documentation (gemma3n_numerics.md, style.md) and the Gemma 3n chat template.
"""


if __name__ == "__main__":
    path = make(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    total = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {path} ({total / 1e6:.2f} MB)")
