"""Train the Thinker on `talkstream data model` output: resumable, with a progress bar and checkpoints (the Talker's
training, on its own data, is talkstream.models.train_talker; it shares TrainConfig and the schedule).

    talkstream train thinker --data data/model --run runs/thinker --steps 8000

Every `--save-every` steps (and at the end) the run folder gets `last.pt` (model, optimiser, step: what resuming
reads) and a shippable checkpoint in `export/` (config + safetensors). `training.json` there records the command,
steps, throughput and losses, and is what `weights/*/training.json` ships.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from talkstream.checkpoint import save_checkpoint
from talkstream.errors import UserError
from talkstream.models import text as tx
from talkstream.models.thinker import Thinker, ThinkerConfig


@dataclass
class TrainConfig:
    steps: int = 8000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 300
    save_every: int = 250
    eval_every: int = 500
    threads: int = 1
    seed: int = 0
    dim: int = 192  # model width and depth: small enough to train on two CPU cores in about an hour
    layers: int = 4
    crop: int = 256  # Talker: frames per training window (3.4 s, its streaming attention window)
    video_share: float = 0.3  # Thinker: share of examples that are video questions (when video data exists)
    init: str | None = None  # start a new run from these weights (new parts, such as a video track, start fresh)


def optimiser_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One update at `lr`, gradients clipped to norm 1 (the Thinker's and the Talker's loops share it)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def resume_run(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, what: str) -> tuple[int, list, float]:
    """(step, history, seconds) from `ckpt` when it exists (model and optimiser restored), else a fresh start."""
    if not ckpt.is_file():
        return 0, [], 0.0
    saved = torch.load(ckpt, weights_only=False)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    print(f"resumed {what} from {ckpt} at step {saved['step']}", file=sys.stderr)
    return saved["step"], saved["history"], saved.get("seconds", 0.0)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# --- Thinker batches ---
class ThinkerBatches:
    MAX_FRAMES = 900  # 12 s

    def __init__(self, items: list[dict], codebook: torch.Tensor, stack: int, seed: int,
                 silence: torch.Tensor | None = None, video_items: list[dict] | None = None,
                 video_stack: int = 4, video_share: float = 0.0):
        self.items, self.codebook, self.stack = items, codebook, stack
        self.rng = random.Random(seed)
        self.silence = silence  # codes [K, F] of near-silence: served turns carry VAD pre-roll and trailing quiet
        self.video_items, self.video_stack = video_items or [], video_stack
        self.video_share = video_share if self.video_items else 0.0

    def latent(self, codes: torch.Tensor, n_q: int) -> torch.Tensor:
        codes = codes[:n_q, : self.MAX_FRAMES].long()
        z = F.embedding(codes[0], self.codebook[0])  # [F, D]: the sum of the codebooks' vectors
        for k in range(1, codes.shape[0]):
            z = z + F.embedding(codes[k], self.codebook[k])
        pad = -z.shape[0] % self.stack
        return F.pad(z, (0, 0, 0, pad)).T  # [D, F']

    def example(self, item: dict, task: int | None = None, n_q: int | None = None) -> tuple:
        if "video" in item:  # a question about the clip: answered (its transcript is learned from the rest)
            video = item["video"].float()
            video = torch.cat([video, video[-1:].expand(-video.shape[0] % self.video_stack, -1)])
            n_q = n_q or self.rng.randint(2, self.codebook.shape[0])
            return self.latent(item["codes"], n_q), tx.CHAT, tx.encode(item["answer"]), video
        if task is None:
            task = tx.CHAT if item["answer"] and self.rng.random() < 0.5 else tx.ASR
        target = item["answer"] if task == tx.CHAT else item["text"]
        codes = item["codes"]
        if self.silence is not None and self.rng.random() < 0.7:
            lead, trail = self.rng.randint(0, 30), self.rng.randint(0, 45)  # up to 0.4 s before, 0.6 s after
            codes = torch.cat([self.silence[:, :lead], codes, self.silence[:, :trail]], -1)
        n_q = n_q or self.rng.randint(2, self.codebook.shape[0])  # any bitrate a client may pick
        return self.latent(codes, n_q), task, tx.encode(target)[:160]

    def collate(self, examples: list[tuple]) -> tuple:
        lat = [e[0] for e in examples]
        fmax = max(x.shape[1] for x in lat)
        latent = torch.stack([F.pad(x, (0, fmax - x.shape[1])) for x in lat])
        audio_len = torch.tensor([x.shape[1] // self.stack for x in lat])
        task = torch.tensor([e[1] for e in examples])
        lmax = max(len(e[2]) for e in examples)
        text = torch.tensor([e[2] + [tx.PAD] * (lmax - len(e[2])) for e in examples])
        text_len = torch.tensor([len(e[2]) for e in examples])
        videos = [e[3] if len(e) > 3 else None for e in examples]
        if all(v is None for v in videos):
            return latent, audio_len, task, text, text_len
        vmax = max(v.shape[0] for v in videos if v is not None)
        width = next(v for v in videos if v is not None).shape[1]
        video = torch.zeros(len(examples), vmax, width)
        for i, v in enumerate(videos):
            if v is not None:
                video[i, : v.shape[0]] = v
        video_len = torch.tensor([0 if v is None else v.shape[0] // self.video_stack for v in videos])
        return latent, audio_len, task, text, text_len, video, video_len

    def sample(self, n: int) -> tuple:
        if self.video_share and self.rng.random() < self.video_share:  # a batch of video questions
            return self.collate([self.example(self.rng.choice(self.video_items)) for _ in range(n)])
        # Neighbours in length share a batch: padding a 2 s question to a 10 s sentence would triple the work.
        if not hasattr(self, "_by_length"):
            self._by_length = sorted(self.items, key=lambda it: it["codes"].shape[-1] + 4 * len(it["text"]))
        start = self.rng.randrange(max(1, len(self._by_length) - 4 * n))
        window = self._by_length[start : start + 4 * n]
        return self.collate([self.example(self.rng.choice(window)) for _ in range(n)])


def _video_items(data: Path, cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """The video questions (`talkstream data video-questions`), when made and asked for."""
    path = data / "video_train.pt"
    if cfg.video_share <= 0 or not path.is_file():
        return [], []
    return torch.load(path, weights_only=False), torch.load(data / "video_eval.pt", weights_only=False)


def _init_from(model: nn.Module, path: Path, kind: str) -> None:
    """Start from trained weights (a shipped checkpoint folder); parts they lack keep their fresh initialisation."""
    from talkstream.checkpoint import read_checkpoint

    _, state = read_checkpoint(path, kind)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise UserError(f"{path}: weights this model does not have: {sorted(unexpected)[:5]}")
    print(f"started from {path}; new: {sorted({k.split('.')[0] for k in missing}) or 'nothing'}", file=sys.stderr)


def _thinker_loss(model: Thinker, batch: tuple) -> tuple[torch.Tensor, dict]:
    loss = model.forward_train(*batch)
    return loss, {"ce": float(loss.detach())}


def train(kind: str, data: Path, run: Path, cfg: TrainConfig, codec=None, command: list[str] | None = None) -> Path:
    """Train (or resume) `kind` ("thinker" | "talker"); returns the export folder."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if not (data / f"{kind}_train.pt").is_file():
        raise UserError(f"{data}: no {kind}_train.pt (run `talkstream data model --out {data}` first)")
    run.mkdir(parents=True, exist_ok=True)
    train_items = torch.load(data / f"{kind}_train.pt", weights_only=False)
    if kind == "thinker" and (data / "thinker_train_more.pt").is_file():  # the same turns in more voices
        train_items += torch.load(data / "thinker_train_more.pt", weights_only=False)
    if kind == "thinker":  # turns over 10 s are rare in a dialogue and cost the most: left out
        train_items = [it for it in train_items if it["codes"].shape[-1] <= 750]
    eval_items = torch.load(data / f"{kind}_eval.pt", weights_only=False)
    if kind == "thinker":
        from talkstream.checkpoint import load_codec_v1

        codec = codec or load_codec_v1()  # the v1 Thinker hears codec v1's tokens
        video_train, video_eval = _video_items(data, cfg)
        video_features = video_train[0]["video"].shape[1] if video_train else 0
        model = Thinker(ThinkerConfig(latent_dim=codec.cfg.latent_dim, dim=cfg.dim, layers=cfg.layers,
                                                 video_features=video_features))
        codebook = codec.quantizer.embed.detach().clone()
        quiet = torch.randn(1, 1, codec.sample_rate) * 1e-3
        silence = codec.encode(quiet)[0].to(torch.int16)
        batches = ThinkerBatches(train_items, codebook, model.cfg.stack, cfg.seed, silence, video_train,
                                 model.cfg.video_stack, cfg.video_share)
        eval_batches = ThinkerBatches(eval_items, codebook, model.cfg.stack, cfg.seed + 1)
        eval_set = [eval_batches.collate([eval_batches.example(it, n_q=8) for it in eval_items[i : i + 16]])
                    for i in range(0, min(len(eval_items), 128), 16)]
        video_eval_set = [eval_batches.collate([eval_batches.example(it, n_q=8) for it in video_eval[i : i + 16]])
                          for i in range(0, min(len(video_eval), 64), 16)]
        loss_fn = _thinker_loss
    else:
        raise ValueError(f"unknown model {kind!r}: this trains the Thinker (the Talker: train_talker.py)")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    ckpt = run / "last.pt"
    video_eval_set = locals().get("video_eval_set") or []
    if not ckpt.is_file() and cfg.init:
        _init_from(model, Path(cfg.init), kind)
    step, history, seconds = resume_run(ckpt, model, opt, kind)

    def evaluate(batches: list) -> float:
        model.eval()
        with torch.no_grad():
            v = sum(float(loss_fn(model, b)[0]) for b in batches) / len(batches)
        model.train()
        return v

    def save(final: bool = False) -> Path:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "seconds": seconds}, run / "last.tmp")
        (run / "last.tmp").rename(ckpt)
        out = save_checkpoint(model, model.cfg.to_dict(), run / "export", kind)
        summary = {"kind": kind, "steps": step, "train_seconds": round(seconds), "batch_size": cfg.batch_size,
                   "train_utterances": len(train_items), "eval_utterances": len(eval_items),
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "history": history[-40:], "command": command or []}
        (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        return out

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {kind}", unit="step")
    running = None
    while step < cfg.steps:
        t0 = time.perf_counter()
        loss, parts = loss_fn(model, batches.sample(cfg.batch_size))
        optimiser_step(model, opt, loss, _lr(step, cfg))
        step += 1
        seconds += time.perf_counter() - t0
        running = parts["ce"] if running is None else 0.98 * running + 0.02 * parts["ce"]
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", **{k: f"{v:.2f}" for k, v in parts.items() if k != "ce"})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append({"step": step, "train": round(running, 4), "eval": round(evaluate(eval_set), 4),
                            "seconds": round(seconds)})
            if video_eval_set:
                history[-1]["eval_video"] = round(evaluate(video_eval_set), 4)
            bar.write(f"step {step}: " + " ".join(f"{k} {v}" for k, v in history[-1].items() if k != "step"))
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    bar.close()
    return save(final=True)
