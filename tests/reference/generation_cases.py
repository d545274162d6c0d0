"""Inputs shared by the generation goldens and the reference-tier generation tests (no torch imports here)."""

# Tokenizer strings: ASCII, unicode (accents, CJK, emoji, combining marks, RTL), runs of spaces / tabs /
# newlines, leading and trailing whitespace, digits, special tokens written in the text (control and
# user-defined), half-written special tokens, characters missing from the vocabulary (byte fallback).
TOKENIZER_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "  leading spaces",
    "trailing spaces   ",
    "two  spaces\tand\ttabs\t\t",
    "line one\nline two\r\nline three\n\n",
    "mix of  \t \n whitespace \u00a0 nbsp",
    "1234567890 3.14159 -42 1e-6",
    "RMSNorm(x) * w  # [B, T, D]",
    "KV-cache sharing: layers 20..34 reuse layer 18/19",
    "Ünïcödé ✓ naïve café",
    "日本語のテキスト",
    "中文 and 한국어 mixed",
    "emoji 🙂🤖 and flags 🇫🇷",
    "combining e\u0301 and a\u0308",
    "שלום עולם مرحبا",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "<start_of_turn>model\n",
    "a<bos>b<eos>c<pad>d<unk>e<mask>",
    "<start_of_image><image_soft_token><end_of_image>",
    "<start_of_audio><audio_soft_token><end_of_audio>",
    "<start_of_turn <end_of_turn> <start_of_turnx>",
    "<<bos>>",
    "[multimodal] token",
    "x" * 40,
    "def f(x):\n    return x ** 2\n",
    "{%- if messages[0]['role'] == 'system' -%}",
    "\u2581 the marker itself \u2581\u2581",
    "\x00 null and \x07 bell",
    "tab\tinside\tand \u3000 ideographic space",
    "Gemma 3n uses AltUp, LAuReL and Per-Layer Embeddings.",
]

# Token-id sequences to decode, beyond the encodings of the strings above: invalid / incomplete UTF-8 byte
# runs, special tokens in the middle, a lone tab byte. Filled with ids at golden time from the vocabulary.
DECODE_BYTE_RUNS = [
    [0xE6, 0x97, 0xA5],          # 日 complete
    [0xE6, 0x97],                # incomplete
    [0xF0, 0x9F],                # incomplete emoji
    [0xFF],                      # never valid
    [0x41, 0xE6, 0x42],          # invalid in the middle
    [0x09, 0xE6],                # tab byte then an incomplete run
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is AltUp?  "}],
    [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there \n"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "  System prompt, untrimmed  "}]},
     {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1 "},
     {"role": "user", "content": [{"type": "text", "text": "Q2"}]}],
    [{"role": "user", "content": "Line one\n\nLine two"}, {"role": "assistant", "content": [
        {"type": "text", "text": "\nReply\n"}]}, {"role": "user", "content": "Thanks <start_of_turn>"}],
    [{"role": "user", "content": "日本語で答えて 🙂"}],
    [{"role": "user", "content": ""}],
]

GENERATION_PROMPTS = [
    "The sliding window attention in Gemma 3n uses a mask of",      # the reference stops on <eos> after 42
    "Per-layer embeddings",                                          # 64 new tokens: decode passes the window
    "Gemma 3n's decoder layers share keys and values: the last layers reuse the K/V of the sliding and the full "
    "attention producers, so the prefill alone is longer than the window.",   # prefill > sliding window 16
]
