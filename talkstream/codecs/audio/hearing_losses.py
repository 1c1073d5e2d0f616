"""Training losses that steer the codec by what a recogniser hears, with a frozen Whisper encoder as the listener.

- `perceptual`: the encoder's states of the decoded audio against those of the original (L1), plus Whisper's own
  log-mel (L1). Whisper's mel is finer than the reconstruction mel in 1-4 kHz, the formant region that carries words,
  and its 80 dB floor ignores what no one hears.
- `semantic`: the first codebook's quantized latent, through a linear projection, regressed onto the Whisper states
  of the input (cosine distance, as SpeechTokenizer does with HuBERT): the first codebook carries content, which the
  Talker that speaks through it needs.

Whisper runs at 50 states/s on 16 kHz audio; the features are computed from the codec's 24 kHz audio directly
(`log_mel_24k`) and resampled in time to the codec's 75 frames/s for the semantic target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.whisper.encoder import WhisperEncoder, log_mel_24k


class HearingLosses(nn.Module):
    """Frozen Whisper encoder + the semantic projection (training only, never shipped with the codec)."""

    def __init__(self, whisper: WhisperEncoder, latent_dim: int):
        super().__init__()
        self.whisper = whisper.eval().requires_grad_(False)
        self.projection = nn.Conv1d(latent_dim, whisper.cfg.d_model, 1)

    def teacher(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T] at 24 kHz -> (log-mel [B, 80, T/240], states [B, T/480, d]) without gradient."""
        with torch.no_grad():
            mel = log_mel_24k(x)
            return mel, self.whisper(mel)

    def perceptual(self, x_hat: Tensor, teacher_mel: Tensor, teacher_states: Tensor) -> tuple[Tensor, Tensor]:
        """(states L1, mel L1) of the decoded audio x_hat [B, T] against the teacher's."""
        mel = log_mel_24k(x_hat)
        n = min(mel.shape[-1], teacher_mel.shape[-1])
        states = self.whisper(mel[..., :n])
        m = min(states.shape[1], teacher_states.shape[1])
        return F.l1_loss(states[:, :m], teacher_states[:, :m]), F.l1_loss(mel[..., :n], teacher_mel[..., :n])

    def semantic(self, first_level: Tensor, teacher_states: Tensor) -> Tensor:
        """first_level [B, D, F] (75 Hz) vs teacher states [B, S, d] (50 Hz): 1 - cosine similarity, mean."""
        target = F.interpolate(teacher_states.transpose(1, 2), size=first_level.shape[-1], mode="linear")
        pred = self.projection(first_level)
        return (1 - F.cosine_similarity(pred, target, dim=1)).mean()
