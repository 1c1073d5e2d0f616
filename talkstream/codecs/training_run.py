"""A codec training run's resumable state, `OUT/checkpoint.pt` (model, optimiser, step, model config): what the
audio and the video codec trainers both read to resume and write every few minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class _Config(Protocol):
    def to_dict(self) -> dict: ...


class ConfiguredModel(Protocol):
    """A codec that carries its config dataclass (`cfg`): the checkpoint saves both."""

    @property
    def cfg(self) -> _Config: ...

    def state_dict(self) -> dict[str, Any]: ...


def read_checkpoint(out: Path) -> dict | None:
    """The run's saved state, or None for a new run."""
    path = Path(out) / "checkpoint.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def resume(ckpt: dict | None, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load a saved state into the model and optimiser -> the step to go on from (0 for a new run)."""
    if ckpt is None:
        return 0
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    return ckpt["step"]


def write_checkpoint(out: Path, model: ConfiguredModel, opt: torch.optim.Optimizer, step: int,
                     extra: dict | None = None) -> None:
    """Save atomically (a stop mid-write leaves the previous checkpoint whole); `extra`: training-only modules."""
    path = Path(out) / "checkpoint.pt"
    tmp = path.with_suffix(".tmp")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "model_config": model.cfg.to_dict(), **(extra or {})}
    torch.save(state, tmp)
    tmp.replace(path)
