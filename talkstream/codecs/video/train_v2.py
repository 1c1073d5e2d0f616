"""Training the video codec v2 (codec_v2.py) on clips made on the fly (data.py): resumable, checkpointed.

    talkstream train video --version 2 --out runs/video_v2 --steps 12000 --max-minutes 75

Each step draws `batch_size` clips of `clip_frames` frames (frame 0 coded intra, the rest conditioned on the
previous decoded frame, gradients through the decoded frames), trains on one random `crop` window of each, and a
quality q ~ U(0, 1) per clip. Loss: bits per pixel + lambda(q) * MSE (lambda log-spaced over the config's
`lambda_range`), so one model covers the whole rate range. A share `static_share` of the clips is a frozen frame,
so that an unchanged picture learns to cost next to nothing. Held-out images and seeds (data.py) are never drawn.
Every `checkpoint_minutes` the training state is saved and exported (config + safetensors + training.json);
rerunning the same command resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from talkstream.codecs.training_run import read_checkpoint, resume, write_checkpoint
from talkstream.codecs.video.codec_v2 import VideoCodecV2, VideoCodecV2Config
from talkstream.codecs.video.data import ImageBank, make_clip

log = logging.getLogger(__name__)


@dataclass
class VideoV2TrainConfig:
    out: str = "runs/video_v2"
    steps: int = 12000
    batch_size: int = 8
    clip_frames: int = 4
    crop: int = 64
    lr: float = 1e-3
    static_share: float = 0.15
    checkpoint_minutes: float = 3.0
    max_minutes: float = 0.0  # stop this run after N minutes (0: until `steps`)
    threads: int = 1
    seed: int = 0


def _lr_at(step: int, cfg: VideoV2TrainConfig) -> float:
    if step < 200:
        return cfg.lr * (step + 1) / 200
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps)))))


def _batch(bank: ImageBank, cfg: VideoV2TrainConfig, step: int, size: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    clips = []
    for i in range(cfg.batch_size):
        clip = make_clip(bank, (cfg.seed * 1_000_003 + step * cfg.batch_size + i) % 900_000, cfg.clip_frames, size)
        if float(torch.rand(1, generator=g)) < cfg.static_share:
            clip = clip[:1].expand_as(clip)
        y = int(torch.randint(0, size[0] - cfg.crop + 1, (1,), generator=g))
        x = int(torch.randint(0, size[1] - cfg.crop + 1, (1,), generator=g))
        clips.append(clip[..., y : y + cfg.crop, x : x + cfg.crop])
    return torch.stack(clips)


def export_weights(codec: VideoCodecV2, out_dir: Path, summary: dict | None = None) -> None:
    from talkstream.checkpoint import save_checkpoint

    save_checkpoint(codec, codec.cfg.to_dict(), out_dir, kind="video_codec_v2")
    if summary is not None:
        (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def training_summary(run_dir: Path, step: int, command: str | None) -> dict:
    rows = []
    if (run_dir / "train_log.jsonl").exists():
        rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    cfg = json.loads((run_dir / "train_config.json").read_text())
    keys = ("step", "loss", "psnr", "bpp_key", "bpp_inter", "bpp_static")
    return {
        "steps": step,
        "command": command,
        "train_config": cfg,
        "frames_seen": step * cfg["batch_size"] * cfg["clip_frames"],
        "wall_minutes": round(sum(r.get("seconds", 0.0) for r in rows) / 60, 1),
        "losses": [{k: r.get(k) for k in keys} for r in rows[:: max(1, len(rows) // 40)]],
        "final": rows[-1] if rows else None,
    }


def train_video_codec_v2(
    cfg: VideoV2TrainConfig, model_cfg: VideoCodecV2Config | None = None, command: str | None = None
) -> Path:
    """Train (or resume) on the CPU and return the export directory."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = read_checkpoint(out)
    if ckpt is not None:
        model_cfg = VideoCodecV2Config.from_dict(ckpt["model_config"])
        log.info("resuming from %s at step %d", out / "checkpoint.pt", ckpt["step"])
    codec = VideoCodecV2(model_cfg)
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-5)
    step = resume(ckpt, codec, opt)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    bank = ImageBank("train")

    def save() -> None:
        write_checkpoint(out, codec, opt, step)
        export_weights(codec, out / "export", training_summary(out, step, command))

    started = last_save = t_window = time.monotonic()
    log_file = open(out / "train_log.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, desc="train video v2", unit="step")
    acc: dict[str, list[float]] = {}
    pixels = cfg.crop * cfg.crop
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        video = _batch(bank, cfg, step, codec.cfg.frame_size)
        q = torch.rand(video.shape[0])
        o = codec.forward_train(video, q)
        mse = ((o["recon"] - video) ** 2).mean(dim=(2, 3, 4))  # [B, T]
        bpp = o["bits"] / pixels
        loss = (bpp + codec.cfg.lmbda(q)[:, None] * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        static = (video[:, 1:] == video[:, :1]).flatten(1).all(1)
        for k, v in (
            ("loss", loss.item()),
            ("mse", mse.mean().item()),
            ("bpp_key", bpp[:, 0].mean().item()),
            ("bpp_inter", bpp[~static, 1:].mean().item() if (~static).any() else math.nan),
            ("bpp_static", bpp[static, 1:].mean().item() if static.any() else math.nan),
        ):
            if not math.isnan(v):
                acc.setdefault(k, []).append(v)
        if step % 25 == 0:
            row = {"step": step, **{k: round(sum(v) / len(v), 5) for k, v in acc.items()}}
            row["psnr"] = round(-10 * math.log10(max(row.pop("mse"), 1e-10)), 2)
            row |= {
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.monotonic() - t_window, 2),
                "time": time.time(),
            }
            bar.set_postfix(psnr=row["psnr"], key=row.get("bpp_key"), inter=row.get("bpp_inter"))
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            acc = {}
            t_window = time.monotonic()
        now = time.monotonic()
        if now - last_save > cfg.checkpoint_minutes * 60:
            save()
            last_save = now
        if cfg.max_minutes and now - started > cfg.max_minutes * 60:
            break
    save()
    bar.close()
    log_file.close()
    return out / "export"
