"""Train the Talker on `talkstream data talker` output: resumable, with a progress bar and checkpoints.

    talkstream train talker --data data/talker --run runs/talker --steps 4000

The loss is the codec latent's L1 and squared error per frame, the durations' squared log error, and a small
cross-entropy on the first codebook (the one that carries most of the content: its nearest code should be the
true frame's). Evaluation reports, on held-out sentences, the latent L1 and how often the first and second
codebooks' tokens are the true ones. Every `--save-every` steps the run folder gets `last.pt` (resume) and a
shippable checkpoint in `export/` (config + safetensors + training.json with the command).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from talkstream.checkpoint import save_checkpoint
from talkstream.errors import UserError
from talkstream.models.talker import PAD_PHONEME, UNK_PHONEME, Talker, TalkerConfig
from talkstream.models.talker_data import load_talker_data, talker_speaker
from talkstream.models.train import TrainConfig, _lr, optimiser_step, resume_run

CE_WEIGHT = 0.1


def unit_inventory(items: list[dict]) -> list[str]:
    return [PAD_PHONEME, UNK_PHONEME] + sorted({u for it in items for u in it["units"]})


class UnitBatches:
    """Batches of random `crop`-frame windows: unit ids, their durations, each frame's unit and place in it, and
    the target latent with its codes."""

    def __init__(self, items: list[dict], model: Talker, crop: int, seed: int):
        self.model, self.crop, self.rng = model, crop, random.Random(seed)
        self.items = []
        for it in items:
            dur = it["durations"].long()
            frame_ph = torch.repeat_interleave(torch.arange(len(dur)), dur)
            offset = torch.arange(len(frame_ph)) - (torch.cumsum(dur, 0) - dur)[frame_ph]
            z = it["latent"].float().T  # [F, D]
            self.items.append({"ids": model.phoneme_ids(it["units"]), "dur": dur, "frame_ph": frame_ph,
                               "offset": offset, "latent": z, "codes": model.quantize(z, 2)})

    def collate(self, chosen: list[dict], random_crop: bool = True) -> dict:
        b, pmax = len(chosen), max(len(c["ids"]) for c in chosen)
        ids = torch.zeros(b, pmax, dtype=torch.long)
        dur = torch.zeros(b, pmax)
        dur_mask = torch.zeros(b, pmax)
        crops = []
        for i, c in enumerate(chosen):
            ids[i, : len(c["ids"])] = c["ids"]
            dur[i, : len(c["dur"])] = c["dur"].float()
            dur_mask[i, : len(c["dur"])] = 1
            n = len(c["frame_ph"])
            s = self.rng.randint(0, max(0, n - self.crop)) if random_crop else 0
            crops.append((s, min(n, s + self.crop)))
        t = max(e - s for s, e in crops)
        d = chosen[0]["latent"].shape[1]
        latent, mask = torch.zeros(b, t, d), torch.zeros(b, t)
        codes = torch.full((b, t, 2), -100, dtype=torch.long)
        frame_ph, prog = torch.zeros(b, t, dtype=torch.long), torch.zeros(b, t, 3)
        for i, (c, (s, e)) in enumerate(zip(chosen, crops, strict=True)):
            n = e - s
            latent[i, :n], mask[i, :n], codes[i, :n] = c["latent"][s:e], 1, c["codes"][s:e]
            frame_ph[i, :n] = c["frame_ph"][s:e]
            prog[i, :n] = Talker.progress(c["offset"][s:e], c["dur"][c["frame_ph"][s:e]])
        return {"ids": ids, "dur": dur, "dur_mask": dur_mask, "frame_ph": frame_ph, "progress": prog,
                "latent": latent, "mask": mask, "codes": codes}

    def sample(self, n: int) -> dict:
        return self.collate([self.rng.choice(self.items) for _ in range(n)])


def predict_latent(model: Talker, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-timed pass: (latent [B, T, D], log-durations [B, P])."""
    ctx, logdur = model.text_context(b["ids"], None)
    frame_ctx = torch.gather(ctx, 1, b["frame_ph"][..., None].expand(-1, -1, ctx.shape[-1]))
    x = model.frame_input(frame_ctx, b["progress"])
    h, _ = model.transformer(x, torch.arange(x.shape[1])[None].expand(x.shape[0], -1))
    return model.latent(h), logdur


def talker_loss(model: Talker, b: dict) -> tuple[torch.Tensor, dict]:
    z, logdur = predict_latent(model, b)
    m = b["mask"][..., None]
    count = m.sum() * z.shape[-1]
    l1 = ((z - b["latent"]).abs() * m).sum() / count
    l2 = ((z - b["latent"]) ** 2 * m).sum() / count
    dur = ((logdur - torch.log1p(b["dur"])) ** 2 * b["dur_mask"]).sum() / b["dur_mask"].sum()
    e = model.codebooks[0]
    # Minus the mean squared distance per dimension to each first-codebook code (up to a constant): a softmax over
    # the codes at the scale of the latent's own errors.
    logits = (2 * z @ e.T - (e * e).sum(1)) / z.shape[-1]
    ce = F.cross_entropy(logits.transpose(1, 2), b["codes"][..., 0], ignore_index=-100)
    return l1 + l2 + dur + CE_WEIGHT * ce, {"l1": l1.item(), "dur": dur.item(), "ce0": ce.item()}


@torch.no_grad()
def evaluate(model: Talker, batches: list[dict]) -> dict:
    model.eval()
    l1 = hits0 = hits1 = frames = 0.0
    for b in batches:
        z, _ = predict_latent(model, b)
        valid = b["mask"].bool()
        l1 += float((z - b["latent"]).abs().mean(-1)[valid].sum())
        codes = model.quantize(z[valid])
        hits0 += float((codes[:, 0] == b["codes"][valid][:, 0]).sum())
        hits1 += float((codes[:, 1] == b["codes"][valid][:, 1]).sum())
        frames += float(valid.sum())
    model.train()
    return {"eval_l1": round(l1 / frames, 4), "eval_acc0": round(hits0 / frames, 4),
            "eval_acc1": round(hits1 / frames, 4)}


def warm_start(model: Talker, path: Path) -> None:
    """Start from a trained Talker (another voice's): every weight of the same shape, and each unit's embedding
    found by its name, since two voices' unit inventories differ. Units the old Talker never read start fresh."""
    from talkstream.checkpoint import load_talker

    old = load_talker(path)
    if (old.cfg.dim, old.cfg.layers) != (model.cfg.dim, model.cfg.layers):
        raise UserError(f"{path} is a Talker of width {old.cfg.dim} and {old.cfg.layers} layers; this run's is "
                         f"{model.cfg.dim} and {model.cfg.layers}")
    own, theirs = model.state_dict(), old.state_dict()
    kept = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape and k != "phoneme_embed.weight"}
    embed = own["phoneme_embed.weight"].clone()
    for name, i in model.phoneme_index.items():
        j = old.phoneme_index.get(name)
        if j is not None:
            embed[i] = theirs["phoneme_embed.weight"][j]
    model.load_state_dict({**own, **kept, "phoneme_embed.weight": embed})
    shared = len(set(model.phoneme_index) & set(old.phoneme_index))
    print(f"warm start from {path}: {len(kept) + 1} of {len(own)} tensors, {shared} of {len(model.phoneme_index)} "
          "units", file=sys.stderr)


def train_talker(data: Path, run: Path, cfg: TrainConfig, codec, command: list[str] | None = None) -> Path:
    """Train (or resume) the Talker; returns the export folder."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run.mkdir(parents=True, exist_ok=True)
    train_items, eval_items = load_talker_data(data, "train"), load_talker_data(data, "eval")
    model = Talker(TalkerConfig(phonemes=unit_inventory(train_items), dim=cfg.dim, layers=cfg.layers,
                                latent_dim=codec.cfg.latent_dim, codebook_size=codec.cfg.codebook_size,
                                codec_id=codec.cfg.codec_id, speaker=talker_speaker(data)))
    ckpt = run / "last.pt"
    if cfg.init and not ckpt.is_file():  # a resumed run keeps its own weights
        warm_start(model, Path(cfg.init))
    model.use_codebooks(codec)  # the codec's own, whatever the warm start held
    batches = UnitBatches(train_items, model, crop=cfg.crop, seed=cfg.seed)
    held = UnitBatches(eval_items, model, crop=cfg.crop, seed=cfg.seed + 1)
    eval_set = [held.collate(held.items[i : i + 16], random_crop=False) for i in range(0, len(held.items), 16)]
    opt = torch.optim.AdamW([p for n, p in model.named_parameters()], lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    step, history, seconds = resume_run(ckpt, model, opt, "the Talker")

    def save() -> Path:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "seconds": seconds}, run / "last.tmp")
        (run / "last.tmp").rename(ckpt)
        out = save_checkpoint(model, model.cfg.to_dict(), run / "export", "talker")
        summary = {"kind": "talker", "steps": step, "train_seconds": round(seconds), "batch_size": cfg.batch_size,
                   "crop_frames": cfg.crop, "train_utterances": len(train_items),
                   "eval_utterances": len(eval_items), "parameters": sum(p.numel() for p in model.parameters()),
                   "history": history[-40:], "command": command or []}
        (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        return out

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train talker", unit="step")
    running = None
    while step < cfg.steps:
        t0 = time.perf_counter()
        loss, parts = talker_loss(model, batches.sample(cfg.batch_size))
        optimiser_step(model, opt, loss, _lr(step, cfg))
        step += 1
        seconds += time.perf_counter() - t0
        running = parts["l1"] if running is None else 0.98 * running + 0.02 * parts["l1"]
        bar.update(1)
        bar.set_postfix(l1=f"{running:.3f}", dur=f"{parts['dur']:.3f}", ce0=f"{parts['ce0']:.2f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append({"step": step, "train_l1": round(running, 4), **evaluate(model, eval_set),
                            "seconds": round(seconds)})
            bar.write(f"step {step}: " + " ".join(f"{k} {v}" for k, v in history[-1].items() if k != "step"))
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    bar.close()
    return save()


@torch.no_grad()
def attach_talker_latents(items: list[dict], talker_path: Path, cache: Path, threads: int = 1) -> None:
    """Give each example `talker_latent`: the Talker's latent [D, F] for its units with the voice's own durations
    (frame for frame with the audio), cached in `cache` keyed by the Talker's weights."""
    from talkstream.checkpoint import load_talker

    torch.set_num_threads(threads)
    key = json.loads((Path(talker_path) / "config.json").read_text())["sha256"]
    saved = torch.load(cache, weights_only=False) if cache.is_file() else None
    if saved is None or saved["talker"] != key or len(saved["latents"]) != len(items):
        model = load_talker(talker_path)
        latents = []
        for it in tqdm(items, desc="Talker latents", unit="utt"):
            one = UnitBatches([it], model, crop=10**9, seed=0)
            z, _ = predict_latent(model, one.collate(one.items, random_crop=False))
            latents.append(z[0].T.to(torch.float16))
        cache.parent.mkdir(parents=True, exist_ok=True)  # a fresh run's folder does not exist yet
        torch.save({"talker": key, "latents": latents}, cache)
        saved = {"latents": latents}
    for it, z in zip(items, saved["latents"], strict=True):
        it["talker_latent"] = z
