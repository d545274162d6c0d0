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

Such a trace starts with the processor's outputs (``input_ids``, ``pixel_values``, ``input_features``,
``input_features_mask``) and holds the merged ``X.inputs_embeds``. More (docs/PORTING.md):

* ``--decode-steps N``: after the prefill, N greedy steps through the KV cache, each under ``step{n}.`` + the
  same names (``trace_decode``); the metadata's ``decoded_ids`` lists the ids fed;
* ``--ids`` / ``--ids-file`` on a multimodal checkpoint: image / audio ids go through the embedders' hard path,
  as in the reference's ``Gemma3nModel`` (``X.inputs_embeds`` traced);
* ``--fine``: also q, k, v after their norms and RoPE, ``mlp.gate_proj``, ``altup_streams`` (``decoder.FineTrace``);
* ``--constants exact`` (with ``--dtype float64``): the text decoder's constants computed in float64 instead of
  the reference's float32 values, for comparing float64 ports with each other.
"""
from __future__ import annotations

import json

import numpy as np

from .errors import InputError


def trace_text(model, ids, dtype=None, decode_steps: int = 0, mm=None) -> dict:
    """Forward ``ids`` (a list of ints: one sequence) through the text decoder and return {name: array} in
    forward order, every traced module output for that sequence plus ``logits`` [T, V]. ``dtype`` (optional)
    must match the model's working dtype; it is only checked. ``decode_steps`` and ``mm`` as ``trace_decode``."""
    if dtype is not None and np.dtype(dtype) != np.dtype(model.dtype):
        raise InputError(f"trace_text: the model computes in {np.dtype(model.dtype).name}, not {np.dtype(dtype).name}")
    return trace_decode(model, ids, decode_steps, mm)[0]


def trace_decode(model, ids, decode_steps: int = 0, mm=None, prefill=None, fine: bool = False) -> tuple[dict, list]:
    """The prefill of ``ids`` and ``decode_steps`` greedy steps through the KV cache (the path ``generate``
    takes) -> (trace, the ids fed to the steps). The prefill's names are the plain ones; step n (1, 2, ...) feeds
    the argmax of the previous logits as one new token and records the same names prefixed ``step{n}.``.

    ``mm``: the ``multimodal.MultimodalModel`` of a multimodal checkpoint: then every call embeds its ids as the
    reference's ``Gemma3nModel`` does (``multimodal.embed_inputs``: image / audio ids through the embedders'
    hard path) and the merged ``X.inputs_embeds`` are traced. ``prefill(trace, cache)``: runs the prefill
    instead (the processed multimodal inputs) and returns (logits, cache). ``fine``: the finer names too
    (``decoder.FineTrace``)."""
    from . import decoder
    from .kv_cache import KVCache
    cache = KVCache.empty(model.cfg, 1, model.dtype) if decode_steps else None

    def run(step_ids, trace, cache):
        step_ids = np.asarray([list(step_ids)], dtype=np.int64)                  # [1, T]
        embeds = None
        if mm is not None:
            from .multimodal import embed_inputs
            embeds = embed_inputs(mm, step_ids, trace=trace)                     # [1, T, D]
        return decoder.forward(model, step_ids, inputs_embeds=embeds, cache=cache, trace=trace)

    new = decoder.FineTrace if fine else dict
    trace = new()
    if prefill is not None:
        logits, cache = prefill(trace, cache)
    else:
        _check_soft_tokens(ids, mm)
        logits, cache = run(ids, trace, cache)
    fed = []
    for n in range(1, decode_steps + 1):
        token = int(np.argmax(logits[0, -1]))
        fed.append(token)
        step = new()
        logits, cache = run([token], step, cache)                                  # [1, 1, V]
        trace.update({f"step{n}.{k}": v for k, v in step.items()})
    return trace, fed


def _check_soft_tokens(ids, mm):
    """Image / audio *soft* token ids stand for tower outputs, which a trace of ids alone cannot make."""
    if mm is None:
        return
    for tok, what in ((mm.cfg.image_token_id, "image"), (mm.cfg.audio_token_id, "audio")):
        if tok in ids:
            raise InputError(f"--ids: id {tok} is the {what} soft token: an image/audio token whose embedding is a "
                             f"{what} tower output; give --{what} with --prompt or --chat instead")


def read_ids_file(path) -> list[int]:
    """Token ids from a file: a JSON list, or integers separated by commas and/or whitespace."""
    from pathlib import Path
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(f"--ids-file {path}: cannot read it ({e.strerror or e})") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except ValueError as e:
            raise InputError(f"--ids-file {path}: not a JSON list of ids ({e})") from None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or not ids:
            raise InputError(f"--ids-file {path}: expected a non-empty JSON list of integers")
        return ids
    return parse_ids(",".join(text.split()), f"--ids-file {path}")


def parse_ids(text: str, what: str = "--ids") -> list[int]:
    """'2,17,5' -> [2, 17, 5]; anything else -> InputError naming the bad item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise InputError(f"{what}: '{item}' is not an integer (expected comma-separated ids like 2,17,5)") from None
    if not out:
        raise InputError(f"{what}: no token ids given (expected comma-separated ids like 2,17,5)")
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
    src.add_argument("--ids", help="comma-separated token ids, e.g. 2,17,5 (image/audio ids of a multimodal "
                                   "checkpoint go through the embedders' hard path, as in the reference)")
    src.add_argument("--ids-file", metavar="PATH", help="token ids from a file (a JSON list, or ids separated by "
                                                        "commas / whitespace)")
    src.add_argument("--chat", help="a user message, wrapped in the Gemma 3n chat template (media attached to it)")
    parser.add_argument("--system", help="system prompt (with --chat)")
    parser.add_argument("--image", metavar="PATH", action="append", default=[],
                        help="an image file (repeatable; with --prompt write one <image_soft_token> per image)")
    parser.add_argument("--audio", metavar="PATH", action="append", default=[],
                        help="a WAV file (with --prompt write <audio_soft_token> where it goes)")
    parser.add_argument("--image-backend", choices=["torchvision", "pil"], default=None,
                        help="which reference image preprocessing to reproduce: torchvision (the reference's "
                             "default, and minig3n's) or pil")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="working precision (float64 = exact arithmetic for comparisons; default float32)")
    parser.add_argument("--decode-steps", type=int, default=0, metavar="N",
                        help="after the prefill, N greedy decoding steps through the KV cache, each traced under "
                             "the same names prefixed 'step{n}.' (the cached path generate takes)")
    parser.add_argument("--constants", choices=["reference", "exact"], default="reference",
                        help="reference (default): the reference's float32 values of sqrt(D), the RoPE frequencies, "
                             "the sparsity z-score etc., also in float64 (matches the lifted reference); exact: "
                             "those computed exactly in float64 (needs --dtype float64), to compare float64 ports "
                             "with each other (the text decoder's constants; the towers keep the reference's)")
    parser.add_argument("--fine", action="store_true",
                        help="also the finer names: q, k, v after their norms and RoPE, the MLP's pre-activation gate "
                             "(mlp.gate_proj), the AltUp streams after magnitude matching (altup_streams)")


def run_trace(args) -> int:
    from pathlib import Path

    from .checkpoint import Checkpoint
    from .decoder import load_text_model
    if not Path(args.out).resolve().parent.is_dir():
        raise InputError(f"--out {args.out}: directory {Path(args.out).resolve().parent} does not exist")
    if Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: is a directory; give the name of the .safetensors file to write")
    if args.decode_steps < 0:
        raise InputError(f"--decode-steps {args.decode_steps}: expected a number of steps >= 0")
    media = getattr(args, "image", None) or getattr(args, "audio", None)
    placeholders = args.prompt is not None and any(ph in args.prompt for ph in ("<image_soft_token>",
                                                                                "<audio_soft_token>"))
    if media or getattr(args, "chat", None) is not None or placeholders:
        return run_trace_multimodal(args)
    if args.ids is not None:
        ids = parse_ids(args.ids)
    elif args.ids_file is not None:
        ids = read_ids_file(args.ids_file)
    else:
        from .tokenizer import Tokenizer   # only this branch needs a tokenizer
        ids = Tokenizer.from_dir(args.model).encode(args.prompt, add_bos=True)
    ckpt = Checkpoint(args.model, np.dtype(args.dtype))
    model = load_text_model(ckpt, constants=args.constants)
    mm = None
    if ckpt.config.is_multimodal:          # ids are embedded as Gemma3nModel does (hard path for media ids)
        from .multimodal import MultimodalModel, load_multimodal_model
        mm = MultimodalModel(model, load_multimodal_model(ckpt).ckpt)
    trace, fed = trace_decode(model, ids, args.decode_steps, mm, fine=args.fine)
    write_trace(args.out, trace, ids=ids, dtype=args.dtype, model=str(args.model), source="minig3n",
                decode_steps=args.decode_steps, decoded_ids=fed, constants=args.constants)
    print(f"wrote {len(trace)} tensors ({len(ids)} tokens, {args.decode_steps} decode step(s), {args.dtype}) "
          f"to {args.out}")
    return 0


PROCESSOR_OUTPUTS = ("input_ids", "pixel_values", "input_features", "input_features_mask")


def processor_trace(inputs) -> dict:
    """The processor's outputs, traced first so a port can be fed exactly the same inputs: ``input_ids`` [T],
    ``pixel_values`` [N, 3, H, W], ``input_features`` [N, F, M], ``input_features_mask`` [N, F] (ids and the mask
    stored as float64: exact; 1 = valid frame)."""
    out = {}
    for name in PROCESSOR_OUTPUTS:
        v = getattr(inputs, name)
        if v is not None:
            v = np.asarray(v)
            out[name] = v[0].astype(np.float64) if name == "input_ids" else (
                v.astype(np.float64) if v.dtype.kind in "iub" else np.array(v))
    return out


def trace_multimodal(model, inputs, decode_steps: int = 0) -> dict:
    """Forward processed inputs (``processor.ModelInputs``) through ``multimodal.forward`` and return {name: array}
    in forward order: the processor's outputs, the towers' module outputs (batch axis kept: every image / clip),
    the embedders' soft outputs, then the text decoder's names (batch row 0) and ``logits`` [T, V]; with
    ``decode_steps``, the greedy steps after it (``trace_decode``)."""
    return trace_decode(model.text, None, decode_steps, model, _multimodal_prefill(model, inputs))[0]


def _multimodal_prefill(model, inputs):
    from .multimodal import forward

    def prefill(trace, cache):
        trace.update(processor_trace(inputs))
        return forward(model, inputs.input_ids, pixel_values=inputs.pixel_values, input_features=inputs.input_features,
                       input_features_mask=inputs.input_features_mask, cache=cache, trace=trace)
    return prefill


def run_trace_multimodal(args) -> int:
    """``minig3n trace`` with --chat and/or --image / --audio: processor -> towers -> merge -> decoder."""
    from .checkpoint import Checkpoint
    from .multimodal import load_multimodal_model
    from .processor import Processor, process
    if args.ids is not None or args.ids_file is not None:
        raise InputError("--ids cannot be combined with --image / --audio: give --prompt (with placeholders) or --chat")
    if args.system is not None and args.chat is None:
        raise InputError("--system needs --chat")
    inputs = process(Processor.from_dir(args.model, args.image_backend), prompt=args.prompt, chat=args.chat,
                     system=args.system, images=args.image, audio=args.audio)
    ids = [int(i) for i in inputs.input_ids[0]]
    ckpt = Checkpoint(args.model, np.dtype(args.dtype))
    if inputs.pixel_values is None and inputs.input_features is None and not ckpt.config.is_multimodal:
        from .decoder import load_text_model   # --chat without media on a text-only checkpoint
        trace, fed = trace_decode(load_text_model(ckpt, constants=args.constants), ids, args.decode_steps,
                                  fine=args.fine)
    else:
        from .decoder import load_text_model
        from .multimodal import MultimodalModel
        mm = load_multimodal_model(ckpt)
        mm = MultimodalModel(load_text_model(ckpt, constants=args.constants), mm.ckpt)
        trace, fed = trace_decode(mm.text, None, args.decode_steps, mm, _multimodal_prefill(mm, inputs), args.fine)
    write_trace(args.out, trace, ids=ids, dtype=args.dtype, model=str(args.model), source="minig3n",
                images=[str(i) for i in args.image], audio=[str(a) for a in args.audio],
                decode_steps=args.decode_steps, decoded_ids=fed, constants=args.constants)
    print(f"wrote {len(trace)} tensors ({len(ids)} tokens, {len(args.image)} image(s), {len(args.audio)} audio "
          f"clip(s), {args.decode_steps} decode step(s), {args.dtype}) to {args.out}")
    return 0
