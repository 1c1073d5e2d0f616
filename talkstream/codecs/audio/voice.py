"""The Talker's own decoder: the shared codec with its decoder fine-tuned on the one voice the Talker speaks.

A general codec trained on two CPU cores leaves speech that an independent recogniser barely understands; a decoder
that only ever has to render one voice (Kokoro-82M's jm_kumo; before it Piper's en_US joe) from that voice's
tokens, and from the Talker's, gets far closer on the same compute, which is what the issue suggests. The encoder
and the quantizer stay frozen, so the tokens are unchanged: the Talker's training data, the shared codec and this
decoder all agree on what a token means. Only the reply path decodes with it; users' speech still goes through the
shared codec.

    talkstream train voice --data data/talker --run runs/voice --steps 1500

(the shipped decoder's exact stages: talkstream/weights/voice_codec/training.json)
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from talkstream.codecs.audio.codec import AudioCodec
from talkstream.codecs.audio.discriminator import (
    MultiResolutionDiscriminator,
    WaveformAndSpectrogramDiscriminator,
    discriminator_loss,
    generator_losses,
)
from talkstream.codecs.audio.losses import complex_loss, phase_loss, spectral_losses

DISCRIMINATORS = {"spectrogram": MultiResolutionDiscriminator, "waveform": WaveformAndSpectrogramDiscriminator}


def voice_pool(items: list[dict], quantizer, num_codebooks: int) -> list[dict]:
    """Examples of `talkstream data talker` as (codes of the true latent, codes of the Talker's latent when
    `item["talker_latent"]` exists, audio float32)."""
    pool = []
    for it in items:
        enc = lambda z: quantizer.encode(z.float()[None], num_codebooks)[0]  # noqa: E731
        pool.append({"codes": enc(it["latent"]), "audio": it["audio"].float() / 32767,
                     "talker": enc(it["talker_latent"]) if "talker_latent" in it else None})
    return pool


def finetune_decoder(codec: AudioCodec, run: Path, items: list[dict], num_codebooks: int = 8, steps: int = 2000,
                     batch_size: int = 8, segment_s: float = 1.0, lr: float = 2e-4, threads: int = 1, seed: int = 0,
                     save_every: int = 100, talker_share: float = 0.5, weight_whisper: float = 1.0,
                     adversarial: float = 0.0, weight_phase: float = 0.0, discriminator: str = "spectrogram",
                     disc_warmup: int = 0) -> Path:
    """Fine-tune a copy of `codec`'s decoder on the Talker's voice (`items` from talkstream.models.talker_data) at
    `num_codebooks`; resumable; returns the export folder.

    A `talker_share` of the segments decode the Talker's own tokens for the same audio (its latent predicted with
    the voice's true durations, so it lines up frame for frame): the decoder learns to sharpen the Talker's blur,
    as vocoders are fine-tuned on an acoustic model's output. The rest decode the audio's own tokens. Whisper's
    states and log-mel of the decoded audio against the voice's (hearing_losses.py) steer it by what a listener
    hears, beside the reconstruction losses. `adversarial` > 0 adds a multi-resolution spectrogram discriminator
    (discriminator.py) with that weight on its hinge and feature-matching losses, ramped in over 200 steps.
    `discriminator` "waveform": HiFi-GAN's period discriminators beside it (discriminator.py), which see phase.
    `weight_phase` > 0 adds losses.phase_loss (group delay and instantaneous frequency) at 4x overlap on the
    decoder's frame length. `disc_warmup` steps first train the discriminator alone against the decoder as it is
    (the decoder unchanged), so that the decoder's first adversarial gradients come from a judge that already knows
    it. Measured: the decoder dipped in DNSMOS all the same (docs/models.md).
    """
    if discriminator not in DISCRIMINATORS:
        raise ValueError(f"discriminator must be 'spectrogram' or 'waveform', not {discriminator!r}")
    from talkstream.checkpoint import save_checkpoint
    from talkstream.codecs.audio.hearing_losses import HearingLosses
    from talkstream.whisper.encoder import load_whisper_encoder

    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(codec).train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.decoder.parameters():
        p.requires_grad_(True)
    hearing = HearingLosses(load_whisper_encoder(), model.cfg.latent_dim) if weight_whisper else None
    opt = torch.optim.AdamW([p for p in model.decoder.parameters()], lr=lr, betas=(0.8, 0.99))
    disc = DISCRIMINATORS[discriminator]() if adversarial else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.8, 0.99)) if disc is not None else None
    step, history, seconds, adv_from = 0, [], 0.0, 0
    ckpt = run / "last.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        model.decoder.load_state_dict(saved["decoder"])
        opt.load_state_dict(saved["opt"])
        step, history, seconds = saved["step"], saved["history"], saved["seconds"]
        adv_from = saved.get("adversarial_from", step)  # a run that turns the discriminator on part way
        if disc is not None and "discriminator" in saved:
            assert opt_d is not None  # made with the discriminator
            disc.load_state_dict(saved["discriminator"])
            opt_d.load_state_dict(saved["opt_d"])
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    pool = voice_pool(items, model.quantizer, num_codebooks)
    with_talker = [p for p in pool if p["talker"] is not None]
    rng = random.Random(seed + step)
    hop, sr = model.cfg.hop, model.sample_rate
    seg_frames = int(segment_s * sr) // hop
    delay = model.decode_delay

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        codes, audio = [], []
        for _ in range(batch_size):
            talker = with_talker and rng.random() < talker_share
            p = rng.choice(with_talker if talker else pool)
            c = p["talker"] if talker else p["codes"]
            c = torch.nn.functional.pad(c, (0, max(0, seg_frames - c.shape[-1])))
            a = torch.nn.functional.pad(p["audio"], (0, max(0, c.shape[-1] * hop - p["audio"].shape[-1])))
            s = rng.randrange(0, c.shape[-1] - seg_frames + 1)
            codes.append(c[:, s : s + seg_frames])
            audio.append(a[s * hop : (s + seg_frames) * hop])
        return torch.stack(codes), torch.stack(audio)[:, None]

    def loss_of(codes: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor, list | None]:
        q = model.quantizer.decode(codes)
        out, _ = model.decode_latent_step(q, model.init_state(x.shape[0]))
        x_hat = out[..., delay:].squeeze(1)
        target = x[..., : x.shape[-1] - delay].squeeze(1)
        parts = spectral_losses(x_hat, target, sr)
        loss = parts["mel"] + parts["stft"] + 0.5 * complex_loss(x_hat, target, 2 * hop, hop)
        if weight_phase:
            loss = loss + weight_phase * phase_loss(x_hat, target, 2 * hop, hop // 2)
        if hearing is not None:
            states, mel = hearing.perceptual(x_hat, *hearing.teacher(target))
            loss = loss + weight_whisper * (states + mel)
        real = None
        if disc is not None:
            # The real audio's pass keeps its graph: the discriminator's own step below reuses it (the decoder's step
            # changes no discriminator weight, and feature matching reads these features detached).
            real = disc(target)
            adv, matching = generator_losses(real, disc(x_hat))
            ramp = min(1.0, max(0, step - adv_from - disc_warmup + 1) / 200)
            loss = loss + adversarial * ramp * (adv + 2 * matching)
        return loss, parts["mel"].item(), x_hat, real

    def save() -> Path:
        extra = {}
        if disc is not None:
            assert opt_d is not None  # made with the discriminator
            extra = {"discriminator": disc.state_dict(), "opt_d": opt_d.state_dict(), "adversarial_from": adv_from}
        torch.save({"decoder": model.decoder.state_dict(), "opt": opt.state_dict(), "step": step,
                    "history": history, "seconds": seconds, **extra}, run / "last.tmp")
        (run / "last.tmp").rename(ckpt)
        out = save_checkpoint(model, model.cfg.to_dict(), run / "export", kind="audio_codec")
        (out / "training.json").write_text(json.dumps({
            "what": f"the shared codec with its decoder fine-tuned on the Talker's voice at {num_codebooks} codebooks",
            "steps": step, "train_seconds": round(seconds), "batch_size": batch_size, "segment_s": segment_s,
            "talker_share": talker_share if with_talker else 0.0, "weight_whisper": weight_whisper,
            "adversarial": adversarial, "discriminator": discriminator if adversarial else None,
            "disc_warmup": disc_warmup if adversarial else None,
            "weight_phase": weight_phase,
            "history": history[-30:], "command": ["talkstream", *sys.argv[1:]],
        }, indent=1) + "\n")
        return out

    bar = tqdm(total=steps, initial=step, desc="voice decoder", unit="step")
    running = None
    while step < steps:
        t0 = time.perf_counter()
        loss, mel, x_hat, real = loss_of(*batch())
        if disc is None or step - adv_from >= disc_warmup:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
            opt.step()
        if disc is not None:  # then the discriminator, on the same segments (the decoder's output detached)
            assert opt_d is not None and real is not None  # made with the discriminator, its real pass by loss_of
            d_loss = discriminator_loss(real, disc(x_hat.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        step += 1
        seconds += time.perf_counter() - t0
        running = mel if running is None else 0.95 * running + 0.05 * mel
        bar.update(1)
        bar.set_postfix(mel=f"{running:.3f}")
        if step % save_every == 0 or step == steps:
            history.append({"step": step, "mel": round(running, 4), "seconds": round(seconds)})
            save()
    bar.close()
    return save()
