"""The Thinker's and the Talker's single-token decoding steps as ONNX graphs, with the KV cache explicit.

Each step graph is the shared transformer run on one new position: inputs `x` [B, 1, dim] (the token's or frame's
input embedding), `position` [B, 1] (int64, the RoPE position) and `past_key_i` / `past_value_i`
[B, heads, past, dim/heads] for every layer; outputs `hidden` [B, 1, dim] and `key_i` / `value_i` with one more
position. The past axis is dynamic (0 and up). Embeddings, the heads and sampling stay in Python: they are cheap and
differ per model.

`thinker_block` is the Thinker's transformer on a block of new positions at once (the `new` axis dynamic too, with
the causal mask inside the block): what listening runs as the user's audio arrives.

    talkstream export model --out onnx-model/

`OnnxTransformerStep` runs a graph behind the transformer's own call signature; set as a model's `onnx_step`, the
Talker decodes its frames and the Thinker its reply in onnxruntime; `block=True` gives the Thinker's listening
(tests/models/test_onnx_steps.py checks parity, frames, replies and listening included).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from talkstream.export.graphs import GraphSpec, export_graphs, state_dict_sha256
from talkstream.models.transformer import Block, KVCache, Transformer

COMPONENT = "model"


class _Step(nn.Module):
    def __init__(self, transformer: Transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, position: Tensor, *past: Tensor):
        n = len(past) // 2
        h, cache = self.transformer(x, position, KVCache(list(past[:n]), list(past[n:])))
        return (h, *cache.keys, *cache.values)


def step_spec(name: str, transformer: Transformer, meta: dict | None = None, block: bool = False) -> GraphSpec:
    """One position per call, or with `block` any number (traced through the masked attention path, which is
    exact for one position too)."""
    blocks = transformer.blocks
    first = cast(Block, blocks[0])
    layers, heads = len(blocks), first.attn.heads
    dim = first.norm1.weight.shape[0]
    past, new = 3, 2 if block else 1  # any lengths: the past axis (and a block's new axis) is dynamic
    args = (torch.randn(1, new, dim), torch.arange(past, past + new)[None],
            *[torch.randn(1, heads, past, dim // heads) for _ in range(2 * layers)])
    keys_in = [f"past_key_{i}" for i in range(layers)] + [f"past_value_{i}" for i in range(layers)]
    keys_out = [f"key_{i}" for i in range(layers)] + [f"value_{i}" for i in range(layers)]
    seq = {0: "batch", 1: "new"} if block else {0: "batch"}
    dynamic = {"x": seq, "position": seq, "hidden": seq}
    dynamic.update({k: {0: "batch", 2: "past"} for k in keys_in})
    dynamic.update({k: {0: "batch", 2: "past_plus_new" if block else "past_plus_one"} for k in keys_out})
    return GraphSpec(name, _Step(transformer), args, ["x", "position", *keys_in], ["hidden", *keys_out], dynamic,
                     meta={"layers": layers, "heads": heads, "dim": dim, **(meta or {})})


def export_model_steps(thinker, talker, out_dir: str | Path, int8: bool = False, whisper_encoder=None) -> dict:
    """Write thinker_step.onnx, thinker_block.onnx and talker_step.onnx (and int8 copies), and with
    `whisper_encoder` the ears' whisper_encoder_block.onnx, with a checksummed manifest."""
    parts = {"thinker": thinker, "talker": talker}
    specs = [step_spec("thinker_step", thinker.transformer, {"model": "thinker"}),
             step_spec("thinker_block", thinker.transformer, {"model": "thinker"}, block=True),
             step_spec("talker_step", talker.transformer, {"model": "talker"})]
    if whisper_encoder is not None:
        from talkstream.models.ears_onnx import encoder_block_spec

        parts["whisper_encoder"] = whisper_encoder
        specs.append(encoder_block_spec(whisper_encoder))
    both = nn.ModuleDict(parts)
    return export_graphs(COMPONENT, specs, out_dir, {"state_sha256": state_dict_sha256(both)}, int8=int8)


class OnnxTransformerStep:
    """A transformer of one position per call (or, over a block graph, any number), in onnxruntime, with the torch
    transformer's call signature."""

    def __init__(self, session, layers: int, block: bool = False):
        self.session, self.layers, self.block = session, layers, block

    def __call__(self, x: Tensor, positions: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        if x.shape[1] != 1 and not self.block:
            raise ValueError("the exported step decodes one position per call")
        if cache is None or not cache.keys:
            b, heads, dh = x.shape[0], self.heads, x.shape[-1] // self.heads
            empty = np.zeros((b, heads, 0, dh), np.float32)
            past = [empty] * (2 * self.layers)
        else:
            past = [t.detach().numpy() for t in (*cache.keys, *cache.values)]
        feeds = {"x": x.detach().numpy().astype(np.float32), "position": positions.numpy().astype(np.int64)}
        feeds.update({f"past_key_{i}": past[i] for i in range(self.layers)})
        feeds.update({f"past_value_{i}": past[self.layers + i] for i in range(self.layers)})
        out = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return out[0], KVCache(out[1 : 1 + self.layers], out[1 + self.layers :])

    @property
    def heads(self) -> int:
        shape = self.session.get_inputs()[2].shape
        return int(shape[1])


def onnx_step(model, providers: list[str] | None = None, int8: bool = False, block: bool = False
              ) -> OnnxTransformerStep:
    """A model's (Thinker's or Talker's) single-position step exported in memory and opened in onnxruntime: set it
    as `model.onnx_step`; with `block`, the block graph (set as the Thinker's `onnx_listen`)."""
    from talkstream.export.graphs import export_bytes, quantize_int8
    from talkstream.export.providers import open_session, select_providers

    kind = "block" if block else "step"
    spec = step_spec(f"{type(model).__name__.lower()}_{kind}", model.transformer, block=block)
    graph = export_bytes(spec)
    if int8:
        graph = quantize_int8(graph, spec)
    return OnnxTransformerStep(open_session(graph, select_providers(providers), name=spec.name),
                               len(model.transformer.blocks), block=block)
