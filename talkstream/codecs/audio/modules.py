"""Causal streaming layers. Each keeps its left context in an explicit state list, never in a hidden buffer.

Every streaming module has `init_state(batch) -> list[Tensor]` and `step(x, state) -> (y, new_state)`. Offline
processing is `step` over the whole signal from `init_state`, so streaming equals offline by construction; the
tests check it numerically for many chunkings.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = list[Tensor]


class Streaming(Protocol):
    """The streaming contract above (a plain module, without it, is run whole by StreamingSequential)."""

    def init_state(self, batch: int) -> State: ...

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...


def keep_last(x: Tensor, n: int) -> Tensor:
    """The last n steps of x's last axis. A constant negative start, so an exported graph slices once instead of
    computing the start from the tensor's shape (four small kernels per state in onnxruntime)."""
    return x[..., -n:] if n else x[..., :0]


class StreamingConv1d(nn.Module):
    """Causal conv: output j sees inputs up to the end of its stride block, never later.

    State: the last `(kernel-1)*dilation + 1 - stride` input samples [B, C_in, ctx]. Step inputs must be a
    multiple of `stride` long.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation, groups=groups)
        self.context = (kernel - 1) * dilation + 1 - stride
        assert self.context >= 0, "kernel must cover the stride"
        self.c_in = c_in

    def init_state(self, batch: int) -> State:
        w = self.conv.weight
        return [torch.zeros(batch, self.c_in, self.context, dtype=w.dtype, device=w.device)]

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xp = torch.cat([state[0], x], dim=-1)
        return self.conv(xp), [keep_last(xp, self.context)]

    def step_depthwise_time_major(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """A depthwise, stride-1, undilated conv's step as a sum over its taps: x [B, C, T] -> y [B, T, C] (time
        major), the same sum as `step`. Exported graphs use it: onnxruntime runs a grouped conv as one small GEMM
        per channel and batch row (nearly half of a batched codec step at batch 16); here one Gather lays each
        output frame's k input rows side by side, and a multiply and a sum over them vectorise (bench backends).
        The step's length is fixed per exported graph, so the gather's indices are constants. torch's own conv
        trains faster, so `step` stays for torch."""
        conv = self.conv
        if not (conv.groups == self.c_in == conv.out_channels and conv.stride == (1,) and conv.dilation == (1,)):
            raise ValueError("step_depthwise_time_major needs a depthwise conv with stride 1 and no dilation")
        assert conv.bias is not None  # nn.Conv1d's default, kept in __init__
        xp = torch.cat([state[0], x], dim=-1)
        t, k = int(x.shape[-1]), conv.kernel_size[0]
        rows = torch.tensor([i + j for i in range(t) for j in range(k)], device=x.device)
        taps = xp.transpose(1, 2).index_select(1, rows).reshape(-1, t, k, self.c_in)  # [B, T, k, C]
        y = (taps * conv.weight[:, 0].T).sum(2) + conv.bias
        return y, [keep_last(xp, self.context)]


class StreamingSequential(nn.Module):
    """Runs streaming children in order, splitting the flat state list between them (plain modules have none)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # How many state tensors each child owns, counted once here rather than on every step.
        self.state_counts = [len(cast(Streaming, layer).init_state(0)) if hasattr(layer, "init_state") else 0
                             for layer in layers]

    def init_state(self, batch: int) -> State:
        return [s for layer in self.layers if hasattr(layer, "init_state")
                for s in cast(Streaming, layer).init_state(batch)]

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new: State = []
        i = 0
        for layer, n in zip(self.layers, self.state_counts, strict=True):
            if n or hasattr(layer, "step"):
                x, s = cast(Streaming, layer).step(x, state[i : i + n])
                new += s
                i += n
            else:
                x = layer(x)
        return x, new


class ResidualUnit(nn.Module):
    """SEANet residual unit: x + 1x1(ELU(dilated causal conv(ELU(x))))."""

    def __init__(self, channels: int, kernel: int = 7, dilation: int = 1):
        super().__init__()
        self.body = StreamingSequential(
            nn.ELU(),
            StreamingConv1d(channels, channels // 2, kernel, dilation=dilation),
            nn.ELU(),
            nn.Conv1d(channels // 2, channels, 1),
        )

    def init_state(self, batch: int) -> State:
        return self.body.init_state(batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, state = self.body.step(x, state)
        return x + h, state


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of [B, C, T]; per frame, so it is causal."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalConvNeXtBlock(nn.Module):
    """ConvNeXt block (Vocos) with a causal depthwise conv: dwconv -> LN -> MLP -> layer scale -> residual."""

    def __init__(self, dim: int, hidden: int, kernel: int = 7, layer_scale: float = 0.1):
        super().__init__()
        self.dwconv = StreamingConv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def init_state(self, batch: int) -> State:
        return self.dwconv.init_state(batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if torch.onnx.is_in_onnx_export():  # the same sum, in the form onnxruntime runs fast
            h, state = self.dwconv.step_depthwise_time_major(x, state)
        else:
            h, state = self.dwconv.step(x, state)
            h = h.transpose(1, 2)
        h = self.fc2(F.gelu(self.fc1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2), state
