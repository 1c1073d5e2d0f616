"""Every causal layer: outputs for a prefix don't change when more input arrives; chunked == batch."""

from __future__ import annotations

import pytest
import torch

from talkstream.codecs.audio.modules import CausalConvNeXtBlock, ResidualUnit, StreamingConv1d, StreamingSequential


def run_chunked(layer, x, sizes):
    state = layer.init_state(x.shape[0])
    outs, i = [], 0
    for n in sizes:
        y, state = layer.step(x[..., i : i + n], state)
        outs.append(y)
        i += n
    return torch.cat(outs, dim=-1)


LAYERS = {
    "conv_k7": (lambda: StreamingConv1d(3, 5, 7), 1),
    "conv_dilated": (lambda: StreamingConv1d(3, 5, 3, dilation=4), 1),
    "conv_strided": (lambda: StreamingConv1d(3, 5, 8, stride=4), 4),
    "depthwise": (lambda: StreamingConv1d(4, 4, 7, groups=4), 1),
    "residual_unit": (lambda: ResidualUnit(4, kernel=5, dilation=2), 1),
    "convnext": (lambda: CausalConvNeXtBlock(4, 8), 1),
    "sequential": (
        lambda: StreamingSequential(
            StreamingConv1d(4, 6, 4, stride=2), torch.nn.ELU(), StreamingConv1d(6, 6, 6, stride=3)
        ),
        6,
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("chunks", [[1] * 12, [3, 5, 4], [12], [2, 10]], ids=["one_by_one", "uneven", "whole", "2+10"])
def test_chunked_equals_batch(name, chunks):
    make, unit = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    c_in = layer.c_in if hasattr(layer, "c_in") else 4
    x = torch.randn(2, c_in, 12 * unit)
    whole = run_chunked(layer, x, [x.shape[-1]])
    chunked = run_chunked(layer, x, [n * unit for n in chunks])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(LAYERS))
def test_prefix_is_causal(name):
    make, unit = LAYERS[name]
    torch.manual_seed(1)
    layer = make()
    c_in = layer.c_in if hasattr(layer, "c_in") else 4
    x = torch.randn(1, c_in, 16 * unit)
    full = run_chunked(layer, x, [x.shape[-1]])
    prefix = run_chunked(layer, x[..., : 8 * unit], [8 * unit])
    torch.testing.assert_close(full[..., : prefix.shape[-1]], prefix, rtol=1e-5, atol=1e-6)
    # changing the future leaves the past untouched
    x2 = x.clone()
    x2[..., 8 * unit :] = torch.randn_like(x2[..., 8 * unit :])
    torch.testing.assert_close(run_chunked(layer, x2, [x.shape[-1]])[..., : prefix.shape[-1]], prefix)


@pytest.mark.parametrize("chunks", [[1] * 10, [3, 7], [10]], ids=["one_by_one", "uneven", "whole"])
def test_depthwise_taps_equal_the_conv(chunks):
    """The exported graphs' depthwise conv (a sum of taps over time-major rows) is the conv torch trains."""
    torch.manual_seed(3)
    layer = StreamingConv1d(6, 6, 7, groups=6)
    x = torch.randn(2, 6, sum(chunks))
    conv_state, taps_state, i = layer.init_state(2), layer.init_state(2), 0
    for n in chunks:
        y, conv_state = layer.step(x[..., i : i + n], conv_state)
        y_taps, taps_state = layer.step_depthwise_time_major(x[..., i : i + n], taps_state)
        torch.testing.assert_close(y_taps, y.transpose(1, 2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(taps_state, conv_state)
        i += n


OTHER_CONVS = {
    "dense": lambda: StreamingConv1d(4, 4, 7),
    "strided": lambda: StreamingConv1d(4, 4, 8, stride=4, groups=4),
    "dilated": lambda: StreamingConv1d(4, 4, 3, dilation=2, groups=4),
}


@pytest.mark.parametrize("make", list(OTHER_CONVS.values()), ids=list(OTHER_CONVS))
def test_depthwise_taps_refuse_other_convs(make):
    layer = make()
    with pytest.raises(ValueError, match="depthwise conv with stride 1"):
        layer.step_depthwise_time_major(torch.zeros(1, 4, 8), layer.init_state(1))
