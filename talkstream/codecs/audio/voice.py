"""The Talker's own decoder: the shared codec with its decoder fine-tuned on the one voice the Talker speaks.

A general codec trained on two CPU cores leaves speech that an independent recogniser barely understands; a decoder
that only ever has to render one voice (espeak-ng en-us) from that voice's tokens gets far closer on the same
compute, which is what the issue suggests. The encoder and the quantizer stay frozen, so the tokens are unchanged:
the Talker's training data, the shared codec and this decoder all agree on what a token means. Only the reply path
decodes with it; users' speech still goes through the shared codec.

    talkstream train voice --run runs/voice --steps 1500
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talkstream.codecs.audio.codec import AudioCodec
from talkstream.codecs.audio.losses import complex_loss, spectral_losses


def voice_audio(voice: str, n_sentences: int, seed: int) -> list[np.ndarray]:
    """The voice speaking template sentences and dialogue answers (24 kHz float32)."""
    from talkstream.data.sentences import sentences
    from talkstream.models.dialogue import dialogues
    from talkstream.models.phonemes import speak

    texts = sentences(n_sentences, seed=seed) + sorted({a for _, a in dialogues(n_sentences, "train", seed)})
    return [speak(t, voice).audio for t in tqdm(texts, desc=f"speech in {voice}", unit="utt")]


def finetune_decoder(codec: AudioCodec, run: Path, voice: str = "en-us", num_codebooks: int = 4, steps: int = 2000,
                     batch_size: int = 8, segment_s: float = 1.0, lr: float = 2e-4, threads: int = 1, seed: int = 0,
                     save_every: int = 100) -> Path:
    """Fine-tune a copy of `codec`'s decoder on `voice` at `num_codebooks`; resumable; returns the export folder."""
    from talkstream.models.loaders import save_checkpoint

    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(codec).train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.decoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.decoder.parameters()], lr=lr, betas=(0.8, 0.99))
    step, history, seconds = 0, [], 0.0
    ckpt = run / "last.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        model.decoder.load_state_dict(saved["decoder"])
        opt.load_state_dict(saved["opt"])
        step, history, seconds = saved["step"], saved["history"], saved["seconds"]
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    pool = voice_audio(voice, 300, seed)
    rng = random.Random(seed + step)
    hop, sr = model.cfg.hop, model.sample_rate
    seg = int(segment_s * sr) // hop * hop
    delay = model.decode_delay

    def batch() -> torch.Tensor:
        out = []
        for _ in range(batch_size):
            a = rng.choice(pool)
            a = np.pad(a, (0, max(0, seg - len(a))))
            s = rng.randrange(0, len(a) - seg + 1)
            out.append(a[s : s + seg])
        return torch.from_numpy(np.stack(out))[:, None]

    def loss_of(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            z, _ = model.encoder.net.step(x, model.encoder.net.init_state(x.shape[0]))
            q = model.quantizer.decode(model.quantizer.encode(z, num_codebooks))
        out, _ = model.decode_latent_step(q, model.init_state(x.shape[0]))
        x_hat = out[..., delay:].squeeze(1)
        target = x[..., : x.shape[-1] - delay].squeeze(1)
        parts = spectral_losses(x_hat, target, sr)
        loss = parts["mel"] + parts["stft"] + 0.5 * complex_loss(x_hat, target, 2 * hop, hop)
        return loss, float(parts["mel"])

    def save() -> Path:
        torch.save({"decoder": model.decoder.state_dict(), "opt": opt.state_dict(), "step": step,
                    "history": history, "seconds": seconds}, run / "last.tmp")
        (run / "last.tmp").rename(ckpt)
        out = save_checkpoint(model, model.cfg.to_dict(), run / "export", kind="audio_codec")
        (out / "training.json").write_text(json.dumps({
            "what": f"the shared codec with its decoder fine-tuned on espeak-ng {voice} at {num_codebooks} codebooks",
            "steps": step, "train_seconds": round(seconds), "batch_size": batch_size, "segment_s": segment_s,
            "history": history[-30:], "command": ["talkstream", *sys.argv[1:]],
        }, indent=1) + "\n")
        return out

    bar = tqdm(total=steps, initial=step, desc="voice decoder", unit="step")
    running = None
    while step < steps:
        t0 = time.perf_counter()
        loss, mel = loss_of(batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
        opt.step()
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
