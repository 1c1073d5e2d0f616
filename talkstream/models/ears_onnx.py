"""The Whisper encoder's block step as an ONNX graph (what the ears run per 2 s block), past keys/values explicit.

Inputs: `mel` [1, n_mels, 2 * positions] (one block's log-mel), `offset` [1] (int64: the block's first encoder
position in the window) and `past_key_i` / `past_value_i` [1, heads, past, head_dim] per layer (the turn's earlier
blocks; the past axis is dynamic, 0 for a turn's first block). Outputs: `states` [1, positions, d_model] and
`key_i` / `value_i` with the block appended. `talkstream export model` writes it beside the Thinker's and Talker's
steps; the services run it in onnxruntime (`load_ears(onnx=True)`), the torch encoder being the reference it is
tested against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from talkstream.export.graphs import GraphSpec
from talkstream.whisper.encoder import WhisperEncoder


class _BlockStep(nn.Module):
    def __init__(self, encoder: WhisperEncoder, positions: int):
        super().__init__()
        self.encoder, self.positions = encoder, positions

    def forward(self, mel: Tensor, offset: Tensor, *past: Tensor):
        enc = self.encoder
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(mel)))).transpose(1, 2)
        # The block's positions gathered by index, so the offset is an input of the graph, not a constant.
        x = x + torch.index_select(enc.positions, 0, offset + torch.arange(self.positions))
        n = len(past) // 2
        keys, values = [], []
        for i, block in enumerate(enc.blocks):
            x, (k, v) = block(x, (past[i], past[n + i]))
            keys.append(torch.cat([past[i], k], 2))
            values.append(torch.cat([past[n + i], v], 2))
        return (enc.ln_post(x), *keys, *values)


def encoder_block_spec(encoder: WhisperEncoder, block_positions: int = 100) -> GraphSpec:
    cfg = encoder.cfg
    layers, heads, dh = cfg.n_layers, cfg.n_heads, cfg.d_model // cfg.n_heads
    past = 7
    args = (torch.randn(1, cfg.n_mels, 2 * block_positions), torch.tensor([past]),
            *[torch.randn(1, heads, past, dh) for _ in range(2 * layers)])
    keys_in = [f"past_key_{i}" for i in range(layers)] + [f"past_value_{i}" for i in range(layers)]
    keys_out = [f"key_{i}" for i in range(layers)] + [f"value_{i}" for i in range(layers)]
    dynamic = {k: {2: "past"} for k in keys_in}
    dynamic.update({k: {2: "past_plus_block"} for k in keys_out})
    return GraphSpec("whisper_encoder_block", _BlockStep(encoder, block_positions), args,
                     ["mel", "offset", *keys_in], ["states", *keys_out], dynamic,
                     meta={"model": "whisper_encoder", "layers": layers, "heads": heads,
                           "block_positions": block_positions})


class OnnxEncoderBlock:
    """The block step in onnxruntime with `WhisperEncoder.forward_block`'s signature (blocks of one fixed size)."""

    def __init__(self, session, encoder: WhisperEncoder, block_positions: int):
        self.session, self.cfg, self.block_positions = session, encoder.cfg, block_positions

    def __call__(self, mel: Tensor, offset: int, past: list | None = None) -> tuple[Tensor, list]:
        if mel.shape[-1] != 2 * self.block_positions:
            raise ValueError(f"the exported block step takes {2 * self.block_positions} mel frames")
        c = self.cfg
        if past is None:
            empty = np.zeros((1, c.n_heads, 0, c.d_model // c.n_heads), np.float32)
            keys = values = [empty] * c.n_layers
        else:
            keys = [k.numpy() for k, _ in past]
            values = [v.numpy() for _, v in past]
        feeds = {"mel": mel.numpy().astype(np.float32), "offset": np.array([offset], np.int64)}
        feeds.update({f"past_key_{i}": keys[i] for i in range(c.n_layers)})
        feeds.update({f"past_value_{i}": values[i] for i in range(c.n_layers)})
        out = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        n = c.n_layers
        return out[0], [(out[1 + i], out[1 + n + i]) for i in range(n)]


def onnx_encoder_block(encoder: WhisperEncoder, block_positions: int = 100, providers: list[str] | None = None
                       ) -> OnnxEncoderBlock:
    """The block step exported in memory and opened in onnxruntime."""
    from talkstream.export.graphs import export_bytes
    from talkstream.export.providers import open_session, select_providers

    spec = encoder_block_spec(encoder, block_positions)
    return OnnxEncoderBlock(open_session(export_bytes(spec), select_providers(providers), name=spec.name), encoder,
                            block_positions)
