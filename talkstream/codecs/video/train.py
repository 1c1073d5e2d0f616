"""Training the video codec on clips made on the fly (data.py): resumable, checkpointed, CPU or CUDA.

    talkstream train video --out runs/video --steps 3000 --max-minutes 30

Each step draws `batch_size` clips of `clip_frames` frames at 128x128 and trains on one random `crop` x `crop`
window of each (the nets are fully convolutional; crops cut the cost 4x at 64 px). The loss runs over every frame
with gradients through the memory, so the decoder learns to use what earlier frames sent. Loss: MSE + 0.1 L1.
Every `checkpoint_minutes` the training state is saved and exported (config + safetensors); rerunning the same
command resumes from it.
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
import torch.nn.functional as F
from tqdm import tqdm

from talkstream.codecs.training_run import read_checkpoint, resume, write_checkpoint
from talkstream.codecs.video.codec import VideoCodec, VideoCodecConfig
from talkstream.codecs.video.data import ImageBank, make_clip

log = logging.getLogger(__name__)


@dataclass
class VideoTrainConfig:
    out: str = "runs/video"
    steps: int = 3000
    batch_size: int = 8
    clip_frames: int = 4
    crop: int = 64
    lr: float = 2e-3
    checkpoint_minutes: float = 3.0
    max_minutes: float = 0.0  # stop this run after N minutes (0: until `steps`)
    threads: int = 1
    seed: int = 0
    device: str = "auto"


def _lr_at(step: int, cfg: VideoTrainConfig) -> float:
    if step < 100:
        return cfg.lr * (step + 1) / 100
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps)))))


def _batch(bank: ImageBank, cfg: VideoTrainConfig, step: int, size: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    clips = []
    for i in range(cfg.batch_size):
        clip = make_clip(bank, (cfg.seed * 1_000_003 + step * cfg.batch_size + i) % 900_000, cfg.clip_frames, size)
        y = int(torch.randint(0, size[0] - cfg.crop + 1, (1,), generator=g))
        x = int(torch.randint(0, size[1] - cfg.crop + 1, (1,), generator=g))
        clips.append(clip[..., y : y + cfg.crop, x : x + cfg.crop])
    return torch.stack(clips)


def export_weights(codec: VideoCodec, out_dir: Path, summary: dict | None = None) -> None:
    from talkstream.checkpoint import save_checkpoint

    save_checkpoint(codec, codec.cfg.to_dict(), out_dir, kind="video_codec")
    if summary is not None:
        (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def training_summary(run_dir: Path, step: int, command: str | None) -> dict:
    rows = []
    if (run_dir / "train_log.jsonl").exists():
        rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    cfg = json.loads((run_dir / "train_config.json").read_text())
    return {
        "steps": step,
        "command": command,
        "train_config": cfg,
        "frames_seen": step * cfg["batch_size"] * cfg["clip_frames"],
        "wall_minutes": round(sum(r.get("seconds", 0.0) for r in rows) / 60, 1),
        "losses": [{k: r[k] for k in ("step", "loss", "psnr", "code_usage")} for r in rows[:: max(1, len(rows) // 40)]],
        "final": rows[-1] if rows else None,
    }


def train_video_codec(
    cfg: VideoTrainConfig, model_cfg: VideoCodecConfig | None = None, command: str | None = None
) -> Path:
    """Train (or resume) and return the export directory."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = read_checkpoint(out)
    if ckpt is not None:
        model_cfg = VideoCodecConfig.from_dict(ckpt["model_config"])
        log.info("resuming from %s at step %d", out / "checkpoint.pt", ckpt["step"])
    codec = VideoCodec(model_cfg or VideoCodecConfig()).to(device)
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    step = resume(ckpt, codec, opt)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    bank = ImageBank("train")

    def save() -> None:
        write_checkpoint(out, codec, opt, step)
        export_weights(codec, out / "export", training_summary(out, step, command))

    started = last_save = t_window = time.monotonic()
    log_file = open(out / "train_log.jsonl", "a")
    bar = tqdm(total=cfg.steps, initial=step, desc="train video", unit="step")
    acc: dict[str, float] = {"loss": 0.0, "mse": 0.0, "n": 0}
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        video = _batch(bank, cfg, step, codec.cfg.frame_size).to(device)
        recon, codes = codec.forward_train(video)
        mse = F.mse_loss(recon, video)
        loss = mse + 0.1 * F.l1_loss(recon, video)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        acc["loss"] += loss.item()
        acc["mse"] += mse.item()
        acc["n"] += 1
        if step % 25 == 0:
            n = acc["n"]
            usage = torch.unique(codes).numel() / codec.codebook_size
            row = {
                "step": step,
                "loss": round(acc["loss"] / n, 5),
                "psnr": round(-10 * math.log10(max(acc["mse"] / n, 1e-10)), 2),
                "code_usage": round(usage, 3),
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.monotonic() - t_window, 2),
                "time": time.time(),
            }
            bar.set_postfix(psnr=row["psnr"], usage=row["code_usage"])
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            acc = {"loss": 0.0, "mse": 0.0, "n": 0}
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
