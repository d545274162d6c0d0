"""The Gemma 3n tokenizer: text <-> token ids, over the checkpoint's sentencepiece ``tokenizer.model``.

The idea: Gemma's vocabulary is a sentencepiece BPE model with byte fallback. Spaces become the marker
``▁`` (U+2581) and stay inside the pieces (no dummy prefix: "Hi there" -> ``Hi``, ``▁there``), digits are
single pieces, and a character the vocabulary lacks is spelled as its UTF-8 bytes (pieces ``<0x00>`` ..
``<0xFF>``). Special tokens are pieces too: control pieces (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<mask>``,
``[multimodal]``), ``<unk>`` and user-defined pieces (``<start_of_turn>``, ``<end_of_turn>``,
``<start_of_image>`` ... ``<audio_soft_token>``). In the official file the multimodal ids
(``<end_of_image>`` 262144, ``<image_soft_token>`` 262145, ``<end_of_audio>`` 262272,
``<audio_soft_token>`` 262273) are pieces of the model as well, so ``len(vocab) == vocab_size``.

What the reference (transformers' ``GemmaTokenizer``, a ``tokenizers`` BPE built from the same file) does, and
this module reproduces:

* encode: a special token *written in the text* (``"<start_of_turn>"``, even ``"<bos>"``) becomes its id. The
  text is split at every special-token string (longest match first, left to right); the pieces in between are
  encoded by sentencepiece. sentencepiece alone would already keep user-defined pieces whole, but it spells
  control pieces such as ``<bos>`` out character by character, which the reference does not.
* ``add_bos=True`` puts ``<bos>`` (2) first, as the reference's ``add_bos_token``; no ``<eos>`` is appended.
* decode: pieces are concatenated with ``▁`` -> space; each run of consecutive byte pieces is decoded as
  UTF-8, and a run that is not valid UTF-8 becomes one U+FFFD per byte (the ``tokenizers`` ByteFallback
  decoder); special tokens appear as their text unless ``skip_special_tokens``. transformers' Gemma converter
  renames the byte piece ``<0x09>`` to a literal tab when the model has no tab piece, so that id decodes as a
  tab on its own, never as part of a byte run. No whitespace clean-up, no stripping.

Source: transformers 5.24 ``models/gemma/tokenization_gemma.py`` and ``convert_slow_tokenizer.GemmaConverter``;
the ``tokenizers`` ByteFallback / Fuse decoders; sentencepiece. Left out: batching, padding, truncation,
offsets, training.

Example (tiny checkpoint): ``Tokenizer.from_dir(d).encode("<start_of_turn>user\\nHi")`` ->
``[2, 6, ...]``: bos, ``<start_of_turn>`` (id 6 there, 105 in the official vocabulary), then the pieces.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError, InputError

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_TAG = re.compile(r"^(<[^<>\s]+>|\[[^\[\]\s]+\])$")  # special pieces that skip_special_tokens drops

# attribute name -> piece; missing pieces give None
SPECIAL_PIECES = {
    "pad_id": "<pad>", "eos_id": "<eos>", "bos_id": "<bos>", "unk_id": "<unk>",
    "start_of_turn_id": "<start_of_turn>", "end_of_turn_id": "<end_of_turn>",
    "boi_id": "<start_of_image>", "eoi_id": "<end_of_image>", "image_token_id": "<image_soft_token>",
    "boa_id": "<start_of_audio>", "eoa_id": "<end_of_audio>", "audio_token_id": "<audio_soft_token>",
}


class Tokenizer:
    """Encode / decode with a Gemma sentencepiece model. Build with ``Tokenizer.from_dir(model_dir)``."""

    def __init__(self, model_file):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer.model not found (the sentencepiece model of the checkpoint)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: not a sentencepiece model ({e})") from None
        self.path = path
        n = self.sp.get_piece_size()
        self.vocab_size = n
        self.pieces = [self.sp.id_to_piece(i) for i in range(n)]
        self.piece_to_id = {p: i for i, p in enumerate(self.pieces)}
        # special = control, unknown and user-defined pieces: matched whole in the text, printed as their text
        types = piece_types(path.read_bytes())
        if len(types) != n:
            raise CheckpointError(f"{path}: could not read the piece types ({len(types)} of {n} pieces)")
        self.special_ids = {i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN, USER_DEFINED)}
        self.skippable_ids = {i for i in self.special_ids if _TAG.match(self.pieces[i])}
        specials = sorted((self.pieces[i] for i in self.special_ids), key=lambda s: (-len(s), s))
        self._split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None
        # byte pieces: id -> byte value. GemmaConverter turns <0x09> into a literal tab if there is no tab piece.
        self.byte_of = {}
        self.text_of = {}
        for i, p in enumerate(self.pieces):
            m = _BYTE_PIECE.match(p)
            if m and self.sp.is_byte(i):
                if p == "<0x09>" and "\t" not in self.piece_to_id:
                    self.text_of[i] = "\t"
                else:
                    self.byte_of[i] = int(m.group(1), 16)
            else:
                self.text_of[i] = p.replace("\u2581", " ")
        for attr, piece in SPECIAL_PIECES.items():
            setattr(self, attr, self.piece_to_id.get(piece))

    @classmethod
    def from_pretrained(cls, model_dir) -> "Tokenizer":
        """The tokenizer of a checkpoint directory; the ecosystem's name for ``from_dir``."""
        return cls.from_dir(model_dir)

    @classmethod
    def from_dir(cls, model_dir) -> "Tokenizer":
        """The tokenizer of a checkpoint directory (its ``tokenizer.model``)."""
        d = Path(model_dir)
        if not d.is_dir():
            raise CheckpointError(f"{d}: checkpoint directory not found")
        return cls(d / "tokenizer.model")

    # encode ----------------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` (special-token strings become their ids); ``<bos>`` first if add_bos."""
        if not isinstance(text, str):
            raise InputError(f"text to encode must be a str, got {type(text).__name__}")
        ids = [self.bos_id] if add_bos else []
        chunks = self._split.split(text) if self._split else [text]
        for k, chunk in enumerate(chunks):
            if k % 2 == 1:                      # a special-token string (re.split keeps the separators)
                ids.append(self.piece_to_id[chunk])
            elif chunk:
                ids += self.sp.encode(chunk)
        return ids

    # decode ----------------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``: pieces joined, ``▁`` -> space, byte runs as UTF-8 (invalid: U+FFFD per byte)."""
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is out of range: ids must lie in [0, {self.vocab_size})")
            if skip_special_tokens and i in self.skippable_ids:
                continue                        # dropped before decoding: byte runs join across it
            if i in self.byte_of:
                run.append(self.byte_of[i])
                continue
            if run:
                out.append(_bytes_to_text(run))
                run = bytearray()
            out.append(self.text_of[i])
        if run:
            out.append(_bytes_to_text(run))
        return "".join(out)

    def is_byte(self, token_id: int) -> bool:
        """True for a byte-fallback piece (``<0xNN>``): its text depends on the bytes that follow."""
        return int(token_id) in self.byte_of

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[int(token_id)]


def check_tokenizer(tok: Tokenizer, text_cfg) -> None:
    """The tokenizer must fit the model it is used with: every piece id below the config's ``vocab_size``
    (the embedding table has that many rows; multimodal ids may lie above the tokenizer's pieces), and a
    ``<bos>`` piece at the config's ``bos_token_id``. CheckpointError naming tokenizer.model otherwise."""
    if tok.vocab_size > text_cfg.vocab_size:
        raise CheckpointError(f"{tok.path}: has {tok.vocab_size} pieces, more than the model's vocab_size "
                              f"{text_cfg.vocab_size} (config.json): ids {text_cfg.vocab_size}.. have no embedding; "
                              "is it the tokenizer of another model?")
    if tok.bos_id is None:
        raise CheckpointError(f"{tok.path}: has no <bos> piece; not a Gemma tokenizer")
    if tok.bos_id != text_cfg.bos_token_id:
        raise CheckpointError(f"{tok.path}: <bos> is id {tok.bos_id}, but config.json says bos_token_id="
                              f"{text_cfg.bos_token_id}; is it the tokenizer of another model?")


# Piece types, read from the serialized ModelProto (sentencepiece's Python API has no is_user_defined, and the
# protobuf package is not a dependency). The file is a protobuf message whose field 1 repeats the pieces, each a
# message {1: piece (string), 2: score (float), 3: type (enum)}; the type is omitted when it is NORMAL.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, i
        shift += 7


def _fields(b: bytes):
    """(field number, wire type, payload) of each top-level field of a protobuf message."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(b, i)
            yield num, wire, value
        elif wire == 2:
            size, i = _varint(b, i)
            yield num, wire, b[i:i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield num, wire, b[i:i + size]
            i += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def piece_types(model_bytes: bytes) -> list[int]:
    """The type of every piece of a sentencepiece model file, in id order."""
    try:
        types = []
        for num, wire, payload in _fields(model_bytes):
            if num == 1 and wire == 2:
                t = NORMAL
                for n2, w2, v2 in _fields(payload):
                    if n2 == 3 and w2 == 0:
                        t = v2
                types.append(t)
        return types
    except (IndexError, ValueError):
        return []


def _bytes_to_text(run: bytearray) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)
