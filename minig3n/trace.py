"""``minig3n trace``: run one sequence and write every named activation to a .safetensors file.

The idea: to check your own Gemma 3n port, dump the same activations from both implementations and let
``minig3n compare`` find the first module where they part. The names are the reference's module paths
(``model.language_model.layers.4.laurel``; the list is in ``decoder.py``'s docstring), with the batch axis
dropped, plus ``logits``. The file's metadata holds ``order`` (a JSON list of the names in forward order),
``ids``, ``dtype`` and ``model``.

    minig3n trace --model weights/tiny-random-gemma3n --ids 2,17,5 --out ours.safetensors --dtype float64
    python -m tests.reference.trace_reference --model weights/tiny-random-gemma3n --ids 2,17,5 \
        --out ref.safetensors --dtype float64
    minig3n compare ref.safetensors ours.safetensors --rtol 1e-10

Source: the reference's module tree (transformers 5.24 ``Gemma3nForCausalLM`` / ``Gemma3nForConditionalGeneration``).
With images / audio (``--image PATH`` repeatable, ``--audio PATH``; with ``--prompt`` write one
``<image_soft_token>`` / ``<audio_soft_token>`` per item, with ``--chat`` they are attached to the user turn) the
prompt goes through ``processor.py`` and ``multimodal.forward`` (``trace_multimodal``), which adds the towers'
names (``model.vision_tower.timm_model.blocks.2.1``, ``model.audio_tower.conformer.0``, ...; batch axis kept, one
row per image / clip) and the embedders' soft outputs (``model.embed_vision``, ``model.embed_audio``)::

    minig3n trace --model DIR --chat "Compare." --image a.png --image b.png --audio a.wav --out ours.safetensors \
        --dtype float64
    python -m tests.reference.trace_reference --model DIR --chat "Compare." --image a.png --image b.png \
        --audio a.wav --out ref.safetensors --dtype float64
"""
from __future__ import annotations

import json

import numpy as np

from .errors import InputError


def trace_text(model, ids, dtype=None) -> dict:
    """Forward ``ids`` (a list of ints: one sequence) through the text decoder and return {name: array} in
    forward order, every traced module output for that sequence plus ``logits`` [T, V]. ``dtype`` (optional)
    must match the model's working dtype; it is only checked."""
    from .decoder import forward
    if dtype is not None and np.dtype(dtype) != np.dtype(model.dtype):
        raise InputError(f"trace_text: the model computes in {np.dtype(model.dtype).name}, not {np.dtype(dtype).name}")
    trace: dict = {}
    forward(model, np.asarray([list(ids)], dtype=np.int64), trace=trace)
    return trace


def parse_ids(text: str) -> list[int]:
    """'2,17,5' -> [2, 17, 5]; anything else -> InputError naming the bad item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise InputError(f"--ids: '{item}' is not an integer (expected comma-separated ids like 2,17,5)") from None
    if not out:
        raise InputError("--ids: no token ids given (expected comma-separated ids like 2,17,5)")
    return out


def write_trace(path, trace: dict, **metadata) -> None:
    from .safetensors_io import save_safetensors
    meta = {"order": json.dumps(list(trace)), **{k: v if isinstance(v, str) else json.dumps(v)
                                                 for k, v in metadata.items()}}
    save_safetensors(path, {k: np.ascontiguousarray(v) for k, v in trace.items()}, meta)


def add_trace_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to tokenize (with BOS) with the checkpoint's tokenizer.model")
    src.add_argument("--ids", help="comma-separated token ids, e.g. 2,17,5")
    src.add_argument("--chat", help="a user message, wrapped in the Gemma 3n chat template (media attached to it)")
    parser.add_argument("--system", help="system prompt (with --chat)")
    parser.add_argument("--image", metavar="PATH", action="append", default=[],
                        help="an image file (repeatable; with --prompt write one <image_soft_token> per image)")
    parser.add_argument("--audio", metavar="PATH", action="append", default=[],
                        help="a WAV file (with --prompt write <audio_soft_token> where it goes)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="working precision (float64 = exact arithmetic for comparisons; default float32)")


def run_trace(args) -> int:
    from pathlib import Path

    from .decoder import load_text_model
    if not Path(args.out).resolve().parent.is_dir():
        raise InputError(f"--out {args.out}: directory {Path(args.out).resolve().parent} does not exist")
    media = getattr(args, "image", None) or getattr(args, "audio", None)
    placeholders = args.prompt is not None and any(ph in args.prompt for ph in ("<image_soft_token>",
                                                                                "<audio_soft_token>"))
    if media or getattr(args, "chat", None) is not None or placeholders:
        return run_trace_multimodal(args)
    if args.ids is not None:
        ids = parse_ids(args.ids)
    else:
        from .tokenizer import Tokenizer   # only this branch needs a tokenizer
        ids = Tokenizer.from_dir(args.model).encode(args.prompt, add_bos=True)
    model = load_text_model(args.model, np.dtype(args.dtype))
    if model.prefix == "model.language_model." and max(ids) >= model.cfg.vocab_size_per_layer_input:
        # the reference's Gemma3nModel replaces these embeddings with embed_vision / embed_audio outputs
        raise InputError(f"--ids: id {max(ids)} is an image/audio token (>= {model.cfg.vocab_size_per_layer_input}); "
                         "its embedding comes from the multimodal embedders, which a text trace does not run")
    trace = trace_text(model, ids, args.dtype)
    write_trace(args.out, trace, ids=ids, dtype=args.dtype, model=str(args.model), source="minig3n")
    print(f"wrote {len(trace)} tensors ({len(ids)} tokens, {args.dtype}) to {args.out}")
    return 0


def trace_multimodal(model, inputs) -> dict:
    """Forward processed inputs (``processor.ModelInputs``) through ``multimodal.forward`` and return {name: array}
    in forward order: the towers' module outputs (batch axis kept: every image / clip), the embedders' soft
    outputs, then the text decoder's names (batch row 0) and ``logits`` [T, V]."""
    from .multimodal import forward
    trace: dict = {}
    forward(model, inputs.input_ids, pixel_values=inputs.pixel_values, input_features=inputs.input_features,
            input_features_mask=inputs.input_features_mask, trace=trace)
    return trace


def run_trace_multimodal(args) -> int:
    """``minig3n trace`` with --chat and/or --image / --audio: processor -> towers -> merge -> decoder."""
    from .multimodal import load_multimodal_model
    from .processor import Processor, process
    if args.ids is not None:
        raise InputError("--ids cannot be combined with --image / --audio: give --prompt (with placeholders) or --chat")
    if args.system is not None and args.chat is None:
        raise InputError("--system needs --chat")
    inputs = process(Processor.from_dir(args.model), prompt=args.prompt, chat=args.chat, system=args.system,
                     images=args.image, audio=args.audio)
    ids = [int(i) for i in inputs.input_ids[0]]
    from .checkpoint import Checkpoint
    ckpt = Checkpoint(args.model, np.dtype(args.dtype))
    if inputs.pixel_values is None and inputs.input_features is None and not ckpt.config.is_multimodal:
        from .decoder import load_text_model   # --chat without media on a text-only checkpoint
        trace = trace_text(load_text_model(ckpt), ids)
    else:
        trace = trace_multimodal(load_multimodal_model(ckpt), inputs)
    write_trace(args.out, trace, ids=ids, dtype=args.dtype, model=str(args.model), source="minig3n",
                images=[str(i) for i in args.image], audio=[str(a) for a in args.audio])
    print(f"wrote {len(trace)} tensors ({len(ids)} tokens, {len(args.image)} image(s), {len(args.audio)} audio "
          f"clip(s), {args.dtype}) to {args.out}")
    return 0
