"""Training the audio codec: resumable, checkpointed, CPU or CUDA (bf16 autocast), one or many GPUs (torchrun).

    talkstream train codec --data data/speech --out runs/codec --minutes 60

Schedule (what made training converge on two CPU cores, see README):
1. `warmup_steps` of plain autoencoder training (no quantizer), so the latent space is shaped first;
2. k-means initialisation of every residual codebook from the warm encoder's latents;
3. training with residual VQ and quantizer dropout (each item uses 1..K codebooks), EMA codebooks with
   dead-code restarts.
Every `checkpoint_minutes` the full training state is saved (and exported as config + safetensors); rerunning the
same command resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from talkstream.audio_io import AudioInputError, load_audio
from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig, LogMelFrames, with_decoder
from talkstream.codecs.audio.hearing_losses import HearingLosses
from talkstream.codecs.audio.losses import complex_loss, spectral_losses
from talkstream.codecs.audio.modules import StreamingConv1d
from talkstream.codecs.training_run import read_checkpoint, resume, write_checkpoint
from talkstream.errors import UserError

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a"}


@dataclass
class TrainConfig:
    data: str = "data/speech"
    out: str = "runs/codec"
    steps: int = 20_000  # total optimiser steps (the lr schedule's length)
    warmup_steps: int = 1_500  # autoencoder-only steps before the quantizer switches on
    batch_size: int = 10
    segment_seconds: float = 0.8
    lr: float = 1e-3
    weight_mel: float = 1.0
    weight_stft: float = 1.0
    weight_complex: float = 1.0
    weight_commit: float = 0.5
    # Steering by a listener (hearing_losses.py): Whisper states / Whisper log-mel of the decoded audio against the
    # input's, and the first codebook regressed onto the input's Whisper states. 0 switches each off.
    weight_whisper: float = 0.0
    weight_whisper_mel: float = 0.0
    weight_semantic: float = 0.0
    noise_prob: float = 0.25  # share of segments with added noise (the codec must carry noise, not invent it)
    bandlimit_prob: float = 0.0  # share low-passed at 4 or 8 kHz (phone lines, 16 kHz microphones): invent no highs
    # Train the decoder alone (encoder and codebooks frozen, so the tokens keep their meaning: everything trained on
    # them, the Talker and its voice decoder, keeps working). Needs `init`.
    decoder_only: bool = False
    # A fresh codec's encoder: "conv" (learned) or "mel" (fixed causal log-mel of `mel_bands` bands, codec v3)
    encoder: str = "conv"
    mel_bands: int = 80
    init_decoder: str = ""  # a fresh run's decoder starts from this codec's (every tensor whose shape matches)
    init: str = ""  # warm start from a codec checkpoint folder (quantizer included: no warm-up, no k-means)
    decoder_subframes: int = 0  # with init: widen its decoder to this many windows per frame (0: as it is)
    # with init: codec v4, the pitch in the bitstream at this many bits per frame and an excited decoder
    # (codec.ExcitedDecoder) of `excited_blocks` blocks warm-started from the init's decoder (0: as it is)
    pitch_bits: int = 0
    excited_blocks: int = 4
    codec_id: str = ""  # a new id for the trained codec (new tokens need a new id); "" keeps the model config's
    checkpoint_minutes: float = 4.0
    max_minutes: float = 0.0  # stop after this many minutes of this run (0 = until `steps`)
    threads: int = 0  # CPU threads (0 = torch default)
    seed: int = 0
    device: str = "auto"


def audio_files(root: Path, split: str = "train") -> list[Path]:
    """Files of `split` from a corpus manifest, else every audio file under root."""
    manifest = root / "manifest.jsonl"
    if manifest.exists():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        return [root / r["file"] for r in rows if r["split"] == split]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


class SegmentSampler:
    """Random fixed-length crops from audio held in memory, with level and noise augmentation."""

    def __init__(self, files: list[Path], sample_rate: int, segment: int, noise_prob: float, seed: int,
                 bandlimit_prob: float = 0.0):
        self.clips = []
        for f in tqdm(files, desc="loading audio", unit="file", leave=False):
            try:
                a = load_audio(f, sample_rate)
            except AudioInputError as e:
                log.warning("skipping %s", e)
                continue
            if a.size >= segment // 2:
                self.clips.append(torch.from_numpy(a))
        if not self.clips:
            raise AudioInputError("no usable audio files found for training")
        self.weights = torch.tensor([float(c.numel()) for c in self.clips])
        self.segment, self.noise_prob, self.bandlimit_prob = segment, noise_prob, bandlimit_prob
        self.sample_rate = sample_rate
        self.g = torch.Generator().manual_seed(seed)
        self.seconds = float(self.weights.sum()) / sample_rate

    def batch(self, n: int) -> Tensor:
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.g)
        out = torch.zeros(n, self.segment)
        for i, j in enumerate(idx.tolist()):
            clip = self.clips[j]
            if clip.numel() > self.segment:
                start = int(torch.randint(0, clip.numel() - self.segment + 1, (1,), generator=self.g))
                out[i] = clip[start : start + self.segment]
            else:
                out[i, : clip.numel()] = clip
        peak = out.abs().amax(dim=1, keepdim=True).clamp(min=1e-4)
        gain_db = torch.empty(n, 1).uniform_(-24, -1, generator=self.g)
        out = out / peak * 10 ** (gain_db / 20)
        if self.bandlimit_prob:
            out = self._bandlimit(out)
        noisy = torch.rand(n, 1, generator=self.g) < self.noise_prob
        snr_db = torch.empty(n, 1).uniform_(10, 40, generator=self.g)
        rms = out.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-5)
        noise = torch.randn(n, self.segment, generator=self.g) * rms * 10 ** (-snr_db / 20)
        return (out + noise * noisy).clamp(-1, 1).unsqueeze(1)


    def _bandlimit(self, out: Tensor) -> Tensor:
        """Low-pass a share of the batch at 4 or 8 kHz (a brick wall in the spectrum with a 500 Hz cosine edge)."""
        pick = torch.rand(out.shape[0], generator=self.g) < self.bandlimit_prob
        if not pick.any():
            return out
        spec = torch.fft.rfft(out[pick], dim=-1)
        freqs = torch.fft.rfftfreq(out.shape[-1], 1 / self.sample_rate)
        cutoff = torch.where(torch.rand(int(pick.sum()), 1, generator=self.g) < 0.5, 4000.0, 8000.0)
        edge = ((cutoff - freqs[None]) / 500.0).clamp(0, 1)
        gain = 0.5 - 0.5 * torch.cos(torch.pi * edge)
        out = out.clone()
        out[pick] = torch.fft.irfft(spec * gain, n=out.shape[-1], dim=-1)
        return out


class CodecLoss(nn.Module):
    """Wraps the codec so one `forward` (what DDP hooks) returns the weighted loss and its parts."""

    def __init__(self, codec: AudioCodec, cfg: TrainConfig, hearing: HearingLosses | None = None):
        super().__init__()
        self.codec, self.cfg, self.hearing = codec, cfg, hearing

    def forward(self, x: Tensor, n_q: Tensor | None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        hop = self.codec.cfg.hop
        x_hat, commit, codes, z = self.codec.forward_train(x, n_q, return_latent=True)
        target = x[..., : x.shape[-1] - self.codec.decode_delay].squeeze(1)
        x_hat = x_hat.squeeze(1).float()
        parts = spectral_losses(x_hat, target, self.codec.sample_rate)
        parts["complex"] = complex_loss(x_hat, target, 2 * hop, hop)
        parts["commit"] = commit.float()
        c = self.cfg
        loss = (
            c.weight_mel * parts["mel"]
            + c.weight_stft * parts["stft"]
            + c.weight_complex * parts["complex"]
            + c.weight_commit * parts["commit"]
        )
        if self.hearing is not None:
            mel_t, states_t = self.hearing.teacher(target)
            if c.weight_whisper or c.weight_whisper_mel:
                parts["whisper"], parts["whisper_mel"] = self.hearing.perceptual(x_hat, mel_t, states_t)
                loss = loss + c.weight_whisper * parts["whisper"] + c.weight_whisper_mel * parts["whisper_mel"]
            if c.weight_semantic and codes.shape[1]:
                _, states_x = self.hearing.teacher(x.squeeze(1))
                q0 = self.codec.quantizer.embed[0][codes[:, 0]].transpose(1, 2)  # [B, D, F]
                q0 = z + (q0 - z).detach()  # straight through to the encoder
                parts["semantic"] = self.hearing.semantic(q0, states_x)
                loss = loss + c.weight_semantic * parts["semantic"]
        return loss, parts, codes


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < 300:
        return cfg.lr * (step + 1) / 300
    progress = min(1.0, step / max(1, cfg.steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_summary(run_dir: Path, step: int) -> dict:
    """What the weights cost: steps, audio seen, throughput by device (median over the log), for the bench table."""
    rows = []
    log_path = run_dir / "train_log.jsonl"
    if log_path.exists():
        rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    by_device: dict[str, list[float]] = {}
    for r in rows:
        by_device.setdefault(r.get("device", "cpu"), []).append(r["audio_s_per_s"])
    cfg = json.loads((run_dir / "train_config.json").read_text()) if (run_dir / "train_config.json").exists() else {}
    return {
        "steps": step,
        "audio_s_per_s": {d: float(np.median(v)) for d, v in by_device.items()},
        "audio_hours_seen": round(step * cfg.get("batch_size", 0) * cfg.get("segment_seconds", 0) / 3600, 2),
        "final_mel_loss": float(np.mean([r["mel"] for r in rows[-10:]])) if rows else None,
        "last_run_config": cfg,
    }


def export_weights(codec: AudioCodec, out_dir: Path, summary: dict | None = None) -> None:
    from talkstream.checkpoint import save_checkpoint

    save_checkpoint(codec, codec.cfg.to_dict(), out_dir, kind="audio_codec")
    if summary is not None:
        (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


@torch.no_grad()
def collect_latents(codec: AudioCodec, sampler: SegmentSampler, n_frames: int, device: torch.device) -> Tensor:
    out, total = [], 0
    while total < n_frames:
        x = sampler.batch(32).to(device)
        z, _ = codec.encoder.net.step(x, codec.encoder.net.init_state(x.shape[0]))
        z = z.transpose(1, 2).reshape(-1, z.shape[1]).float().cpu()
        out.append(z)
        total += z.shape[0]
    return torch.cat(out)[:n_frames]


@torch.no_grad()
def excited_from(codec: AudioCodec, pitch_bits: int = 6, blocks: int = 4) -> AudioCodec:
    """Codec v4 from a mel codec (v3): the same encoder and codebooks (the same tokens, so what was trained on
    them keeps working), the pitch in the bitstream, and an excited decoder warm-started from the codec's: its
    input layer (the pitch inputs start at zero), its first `blocks` blocks and its magnitude head."""
    if codec.cfg.encoder != "mel" or codec.cfg.decoder_subframes != 1 or codec.cfg.decoder_phase != "absolute":
        raise UserError("codec v4 starts from a mel codec (v3) with one absolute-phase window per frame")
    cfg = dataclasses.replace(codec.cfg, decoder="excited", pitch_bits=pitch_bits, decoder_blocks=blocks,
                              codec_id="talkstream-audio-v4")
    new = AudioCodec(cfg)
    own = {k: v for k, v in codec.state_dict().items() if not k.startswith("decoder.")}
    missing, unexpected = new.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing), (missing, unexpected)
    old, dec = codec.decoder, new.decoder
    first_old = cast(StreamingConv1d, old.net.layers[0]).conv
    first_new = cast(StreamingConv1d, dec.net.layers[0]).conv
    assert first_old.bias is not None and first_new.bias is not None  # StreamingConv1d's convs have biases
    first_new.weight.zero_()
    first_new.weight[:, : first_old.weight.shape[1]] = first_old.weight
    first_new.bias.copy_(first_old.bias)
    for i in range(blocks):
        dec.net.layers[1 + i].load_state_dict(old.net.layers[1 + i].state_dict())
    dec.net.layers[-1].load_state_dict(old.net.layers[-1].state_dict())
    dec.head.weight.copy_(old.head.weight[: dec.bins])
    dec.head.bias.copy_(old.head.bias[: dec.bins])
    return new


def warm_start(path: str, decoder_subframes: int = 0) -> AudioCodec:
    """A codec from a checkpoint folder, with the EMA statistics the shipped weights leave out rebuilt from its
    codebooks (otherwise the first EMA update would replace every codebook with noise). `decoder_subframes` > 0
    and different from the checkpoint's: its decoder widened to that many windows per frame (with_decoder_subframes).
    """
    from talkstream.checkpoint import load_audio_codec

    codec = with_decoder(load_audio_codec(path), decoder_subframes or None).train()
    q = codec.quantizer
    q.cluster_size.fill_(1.0)
    q.embed_sum.copy_(q.embed)
    return codec


@torch.no_grad()
def _copy_matching(dst: nn.Module, src: nn.Module) -> None:
    """Copy every tensor of `src` into `dst` where name and shape agree (a new input layer starts fresh)."""
    theirs = src.state_dict()
    mine = dst.state_dict()
    kept = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    dst.load_state_dict({**mine, **kept})
    log.info("decoder warm start: %d of %d tensors copied", len(kept), len(mine))


def train_codec(cfg: TrainConfig, model_cfg: AudioCodecConfig | None = None) -> Path:
    """Train (or resume) and return the export directory."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = read_checkpoint(out)
    if ckpt is not None:
        model_cfg = AudioCodecConfig.from_dict(ckpt["model_config"])
        log.info("resuming from %s at step %d", out / "checkpoint.pt", ckpt["step"])
    if ckpt is None and cfg.init:
        codec = warm_start(cfg.init, cfg.decoder_subframes)
        if cfg.pitch_bits:
            codec = excited_from(codec, cfg.pitch_bits, cfg.excited_blocks).train()
    else:
        if model_cfg is None:
            model_cfg = AudioCodecConfig()
            if cfg.encoder == "mel":
                model_cfg = AudioCodecConfig(encoder="mel", latent_dim=cfg.mel_bands)
        codec = AudioCodec(model_cfg)
        if cfg.init_decoder and ckpt is None:
            _copy_matching(codec.decoder, warm_start(cfg.init_decoder).decoder)
    if cfg.codec_id:
        codec.cfg = dataclasses.replace(codec.cfg, codec_id=cfg.codec_id)
    codec = codec.to(device)
    if cfg.decoder_only:
        if not (cfg.init or ckpt):
            raise UserError("--decoder-only trains a decoder for existing tokens: give --init CODEC_DIR")
        codec.encoder.requires_grad_(False)
        codec.quantizer.eval()  # no EMA updates, no dead-code restarts: the codebooks stay as they are
    hearing = None
    if cfg.weight_whisper or cfg.weight_whisper_mel or cfg.weight_semantic:
        from talkstream.whisper.encoder import load_whisper_encoder

        hearing = HearingLosses(load_whisper_encoder(), codec.cfg.latent_dim).to(device)
    trainable = [p for p in codec.parameters() if p.requires_grad]
    trainable += list(hearing.projection.parameters()) if hearing else []
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.8, 0.99), weight_decay=1e-4)
    step = resume(ckpt, codec, opt)
    if hearing is not None and ckpt is not None and "projection" in ckpt:
        hearing.projection.load_state_dict(ckpt["projection"])
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    segment = round(cfg.segment_seconds * codec.frame_rate) * codec.frame_size
    sampler = SegmentSampler(
        audio_files(Path(cfg.data)), codec.sample_rate, segment, cfg.noise_prob, cfg.seed + 1000 * rank + step,
        cfg.bandlimit_prob,
    )
    log.info("training on %.1f minutes of audio, %d clips", sampler.seconds / 60, len(sampler.clips))
    loss_fn: nn.Module = CodecLoss(codec, cfg, hearing)
    if world > 1:
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, broadcast_buffers=False)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def save() -> None:
        if rank != 0:
            return
        extra = {"projection": hearing.projection.state_dict()} if hearing is not None else None
        write_checkpoint(out, codec, opt, step, extra)
        export_weights(codec, out / "export", training_summary(out, step))

    started = last_save = time.monotonic()
    log_file = open(out / "train_log.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=cfg.steps, initial=step, desc="train codec", unit="step", disable=rank != 0)
    audio_seconds, t_window = 0.0, time.monotonic()
    if codec.cfg.encoder == "mel" and not (cfg.init or ckpt):
        log.info("fitting the log-mel front end's per-band normalisation")
        cast(LogMelFrames, codec.encoder.net.layers[0]).fit(collect_latents(codec, sampler, 20_000, device))
    while step < cfg.steps:
        if step == cfg.warmup_steps and not (cfg.init or ckpt):
            log.info("initialising codebooks with k-means on encoder latents")
            z = collect_latents(codec, sampler, 40 * codec.codebook_size, device)
            codec.quantizer.init_from_latents(z.to(device))
            if world > 1:
                for b in codec.quantizer.buffers():
                    torch.distributed.broadcast(b, 0)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x = sampler.batch(cfg.batch_size).to(device)
        n_q = None
        if step >= cfg.warmup_steps or cfg.init:
            n_q = torch.randint(1, codec.num_codebooks + 1, (x.shape[0],), device=device)
        with amp:
            loss, parts, codes = loss_fn(x, n_q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 5.0)
        opt.step()
        step += 1
        audio_seconds += x.shape[0] * x.shape[-1] / codec.sample_rate * world
        bar.update(1)
        if step % 50 == 0 and log_file is not None:  # rank 0
            dt = time.monotonic() - t_window
            row = {
                "step": step,
                "loss": float(loss),
                **{k: round(float(v), 5) for k, v in parts.items()},
                "lr": opt.param_groups[0]["lr"],
                "audio_s_per_s": round(audio_seconds / dt, 2),
                "device": device.type,
                "time": time.time(),
            }
            if codes.shape[1]:
                row["usage"] = [round(u["used"], 3) for u in codec.quantizer.usage(codes)]
            bar.set_postfix(mel=f"{row['mel']:.3f}", aps=row["audio_s_per_s"])
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            audio_seconds, t_window = 0.0, time.monotonic()
        now = time.monotonic()
        if now - last_save > cfg.checkpoint_minutes * 60:
            save()
            last_save = now
        if cfg.max_minutes and now - started > cfg.max_minutes * 60:
            break
    save()
    bar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return out / "export"
