"""The codec's streaming steps as ONNX graphs run by onnxruntime: the same `CodecState` in and out as torch.

One graph per (operation, codebooks, frames per step), each with a dynamic batch axis, so the server's `CodecEngine`
stacks sessions exactly as it does with torch. Every state tensor is an explicit input and output:

|graph (file `<name>.onnx`)|inputs|outputs|
|---|---|---|
|`codec.encode.k{K}.f{F}`|`pcm` [batch, 1, F*320] f32, `enc_state{i}`|`codes` [batch, K, F] i64, `next_enc_state*`|
|`codec.decode.k{K}.f{F}`|`codes` [batch, K, F] i64, `dec_state{i}`|`pcm` [batch, 1, F*320] f32, `next_dec_state*`|
|`codec.roundtrip.k{K}.f{F}`|`pcm`, `enc_state{i}`, `dec_state{i}`|`codes`, `pcm_out`, both states' `next_*`|

`enc_state{i}`/`dec_state{i}` are `CodecState.encoder[i]`/`.decoder[i]` (conv tails [batch, C, context]; the last
decoder state is the overlap-add tail [batch, 640 - 320 / decoder_subframes]); the exact shapes are in each
export's manifest.json. A decoded block trails its input by one hop, as in torch; the sliding-window decoder's
blocks are `decode` graphs from a zero state (`OnnxAudioCodec.decode`), so it needs no graph of its own.

Graphs come from an export folder (`talkstream export codec`, verified against the loaded weights) or, for any
configuration not exported, are exported in memory on first use (about a second each).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from talkstream.codecs.audio.codec import AudioCodec, CodecState
from talkstream.errors import UserError
from talkstream.export.graphs import (
    GraphSpec,
    export_bytes,
    export_graphs,
    quantize_int8,
    read_manifest,
    state_dict_sha256,
)
from talkstream.export.providers import open_session, select_providers

log = logging.getLogger(__name__)
OPS = ("encode", "decode", "roundtrip")
# Sessions per codec object: servers (and tests) that share a loaded codec open each graph once.
_SESSIONS: weakref.WeakKeyDictionary[AudioCodec, dict[tuple, object]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Step(torch.nn.Module):
    def __init__(self, codec: AudioCodec, op: str, num_codebooks: int, num_encoder_states: int):
        super().__init__()
        self.codec, self.op, self.k, self.ne = codec, op, num_codebooks, num_encoder_states

    def forward(self, x: Tensor, *states: Tensor):
        enc = list(states[: self.ne]) if self.op != "decode" else []
        dec = list(states[self.ne :]) if self.op == "roundtrip" else list(states) if self.op == "decode" else []
        state = CodecState(self.k, x[:, :1, :0].float(), enc, dec)  # whole frames only: nothing pending
        if self.op == "decode":
            pcm, state = self.codec.decode_step(x, state)
            return (pcm, *state.decoder)
        if self.op == "encode":
            codes, state = self.codec.encode_step(x, state)
            return (codes, *state.encoder)
        codes, pcm, state = self.codec.roundtrip_step(x, state)
        return (codes, pcm, *state.encoder, *state.decoder)


def codec_state_sha256(codec: AudioCodec) -> str:
    """The weights the graphs depend on (not the quantizer's EMA statistics, which only training uses)."""
    from talkstream.checkpoint import _TRAINING_ONLY

    return state_dict_sha256(codec, skip=_TRAINING_ONLY)


def graph_name(op: str, num_codebooks: int, frames: int) -> str:
    return f"codec.{op}.k{num_codebooks}.f{frames}"


def codec_graph_spec(codec: AudioCodec, op: str, num_codebooks: int, frames: int) -> GraphSpec:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if frames < 1:
        raise ValueError("frames per step must be >= 1")
    k = codec._check_codebooks(num_codebooks)
    state = codec.init_state(2, k)
    enc_names = [f"enc_state{i}" for i in range(len(state.encoder))]
    dec_names = [f"dec_state{i}" for i in range(len(state.decoder))]
    if op == "decode":
        x, x_name = torch.zeros(2, k, frames, dtype=torch.long), "codes"
        names, states, outs = dec_names, state.decoder, ["pcm"]
    else:
        x, x_name = torch.zeros(2, 1, frames * codec.frame_size), "pcm"
        names = enc_names + (dec_names if op == "roundtrip" else [])
        states = state.encoder + (state.decoder if op == "roundtrip" else [])
        outs = ["codes"] + (["pcm_out"] if op == "roundtrip" else [])
    out_names = outs + [f"next_{n}" for n in names]
    return GraphSpec(
        name=graph_name(op, k, frames),
        module=_Step(codec, op, k, len(state.encoder)),
        args=(x, *states),
        input_names=[x_name, *names],
        output_names=out_names,
        dynamic_axes={n: {0: "batch"} for n in [x_name, *names, *out_names]},
        meta={"op": op, "codebooks": k, "frames": frames, "frame_size": codec.frame_size},
        # Only the Linear layers (named scopes: fc1, fc2, head) go int8. The module-less matmuls stay float: the
        # quantizer's code distances (int8 would change the codes themselves) and the inverse DFT.
        int8_keep_float=(r"^/MatMul(_\d+)?$",),
    )


def export_codec(
    codec: AudioCodec,
    out_dir: str | Path,
    codebooks: list[int] | None = None,
    frames_per_step: list[int] | None = None,
    ops: tuple[str, ...] = OPS,
    int8: bool = False,
    weights_sha256: str | None = None,
    progress=None,
) -> dict:
    """`talkstream export codec`: every (op, codebooks, frames) graph into `out_dir` with manifest.json."""
    specs = [
        codec_graph_spec(codec, op, k, f)
        for k in (codebooks or [codec.num_codebooks])
        for f in (frames_per_step or [1, 2])
        for op in ops
    ]
    source = {
        "codec_id": codec.cfg.codec_id,
        "config": codec.cfg.to_dict(),
        "weights_sha256": weights_sha256,  # the shipped safetensors file's checksum, when exported from one
        "state_sha256": codec_state_sha256(codec),
    }
    return export_graphs("codec", specs, out_dir, source, int8=int8, progress=progress)


class OnnxCodecSteps:
    """`step(op, x, state) -> (codes | None, pcm | None, state)` through onnxruntime.

    `export_dir`: graphs from a `talkstream export codec` folder (verified: version, checksums, same weights);
    configurations it lacks are exported in memory, logged. `precision`: "fp32" or "int8" (dynamic quantization).
    `providers`: order of execution providers (see talkstream.export.providers); `threads`: intra-op threads.
    """

    def __init__(
        self,
        codec: AudioCodec,
        threads: int = 1,
        precision: str = "fp32",
        providers: list[str] | str | None = None,
        export_dir: str | Path | None = None,
        strict_providers: bool = False,
    ):
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        if codec.pitch_rows:
            raise UserError(
                f"{codec.cfg.codec_id} (pitch in the bitstream) has no ONNX graphs yet: use --backend torch"
            )
        self.codec, self.threads, self.precision = codec, threads, precision
        self.providers = select_providers(providers, strict=strict_providers)
        self.export_dir = str(export_dir) if export_dir else None
        self._files: dict[tuple, str] = {}
        if export_dir:
            manifest = read_manifest(export_dir, "codec", codec_state_sha256(codec))
            for g in manifest["graphs"]:
                m = g["meta"]
                self._files[(m["op"], m["codebooks"], m["frames"], g["precision"])] = g["path"]

    def frames_available(self, op: str, num_codebooks: int) -> list[int]:
        """Frames per step with a ready graph (exported folder), largest first; in memory any size can be made."""
        got = sorted({f for (o, k, f, p) in self._files if (o, k, p) == (op, num_codebooks, self.precision)})
        return got[::-1]

    def _session(self, op: str, k: int, frames: int):
        key = (op, k, frames, self.precision, self.threads, tuple(self.providers), self.export_dir)
        with _LOCK:
            sessions = _SESSIONS.setdefault(self.codec, {})
            if key not in sessions:
                sessions[key] = self._open(op, k, frames)
            return sessions[key]

    def _open(self, op: str, k: int, frames: int):
        name = graph_name(op, k, frames)
        path = self._files.get((op, k, frames, self.precision))
        if path is not None:
            sess = open_session(path, self.providers, self.threads, name=path)
        else:
            if self.export_dir:
                log.warning("%s (%s) is not in %s; exporting it in memory", name, self.precision, self.export_dir)
            spec = codec_graph_spec(self.codec, op, k, frames)
            data = export_bytes(spec)
            if self.precision == "int8":
                data = quantize_int8(data, spec)
            sess = open_session(data, self.providers, self.threads, name=name)
            log.info("exported %s (%s) to ONNX in memory", name, self.precision)
        inputs = [i.name for i in sess.get_inputs()]
        return sess, set(inputs), [o.name for o in sess.get_outputs()]

    def warmup(self, ops: list[tuple[str, int, int]]) -> None:
        for op, k, frames in ops:
            self._session(op, k, frames)

    def step(self, op: str, x: Tensor, state: CodecState) -> tuple[Tensor | None, Tensor | None, CodecState]:
        """x: pcm [B, 1, F*hop] (encode, roundtrip) or codes [B, K, F] (decode); state: a (stacked) CodecState."""
        if state.pending.shape[-1]:
            raise ValueError("the ONNX steps take whole frames only")
        frames = x.shape[-1] if op == "decode" else x.shape[-1] // self.codec.frame_size
        k = state.num_codebooks if op != "decode" else x.shape[1]
        sess, used, out_names = self._session(op, k, frames)
        feeds = {"codes" if op == "decode" else "pcm": x.numpy()}
        if op != "decode":
            feeds.update({f"enc_state{i}": s.numpy() for i, s in enumerate(state.encoder)})
        if op != "encode":
            feeds.update({f"dec_state{i}": s.numpy() for i, s in enumerate(state.decoder)})
        res = dict(zip(out_names, sess.run(None, {n: v for n, v in feeds.items() if n in used}), strict=True))

        def new(prefix: str, old: list[Tensor]) -> list[Tensor]:
            # A state the graph does not use (zero-length context) is passed through unchanged.
            return [torch.from_numpy(np.asarray(res.get(f"next_{prefix}{i}", s))) for i, s in enumerate(old)]

        enc = new("enc_state", state.encoder) if op != "decode" else state.encoder
        dec = new("dec_state", state.decoder) if op != "encode" else state.decoder
        codes = torch.from_numpy(res["codes"]) if op != "decode" else None
        pcm = torch.from_numpy(res["pcm" if op == "decode" else "pcm_out"]) if op != "encode" else None
        return codes, pcm, CodecState(state.num_codebooks, state.pending, enc, dec)


class OnnxAudioCodec:
    """The `AudioCodec` interface (properties, `init_state`, `encode_step`/`decode_step`, offline `encode`/`decode`/
    `reconstruct`) with every step run by onnxruntime: what `--backend onnx` gives the CLI commands.

    Steps take any number of samples, like torch: partial frames wait in `state.pending`; whole frames run through
    the largest available graph that fits, then one-frame graphs for the rest (`chunks` sets the in-memory sizes).
    """

    backend = "onnx"

    def __init__(self, codec: AudioCodec, steps: OnnxCodecSteps | None = None, chunks: tuple[int, ...] = (6, 1)):
        self.torch_codec = codec
        self.steps = steps or OnnxCodecSteps(codec)
        self.chunks = chunks

    def __getattr__(self, name: str):  # cfg, sample_rate, frame_size, init_state, bitrate, ... from the torch codec
        return getattr(self.torch_codec, name)

    def _split(self, op: str, k: int, n: int) -> list[int]:
        sizes = self.steps.frames_available(op, k) or list(self.chunks)
        if 1 not in sizes:
            sizes.append(1)
        out = []
        for s in sorted(sizes, reverse=True):
            out += [s] * (n // s)
            n %= s
        return out

    def encode_step(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """pcm: float [B, 1, T] (any T >= 0) -> codes long [B, K, F] for every whole frame now available."""
        hop = self.frame_size
        x = torch.cat([state.pending, pcm.to(state.pending.dtype)], dim=-1)
        n = x.shape[-1] // hop
        st = dataclasses.replace(state, pending=x[..., :0])
        codes = [torch.zeros(x.shape[0], state.num_codebooks, 0, dtype=torch.long)]
        i = 0
        for f in self._split("encode", state.num_codebooks, n):
            c, _, st = self.steps.step("encode", x[..., i * hop : (i + f) * hop].contiguous(), st)
            assert c is not None  # an encode step gives codes
            codes.append(c)
            i += f
        return torch.cat(codes, dim=-1), dataclasses.replace(st, pending=x[..., n * hop :])

    def decode_step(self, codes: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """codes long [B, K, F] (K <= num_codebooks) -> pcm float [B, 1, F*hop]."""
        self.torch_codec.check_codes(codes)
        out, i = [torch.zeros(codes.shape[0], 1, 0)], 0
        for f in self._split("decode", codes.shape[1], codes.shape[-1]):
            _, pcm, state = self.steps.step("decode", codes[..., i : i + f].contiguous(), state)
            assert pcm is not None  # a decode step gives audio
            out.append(pcm)
            i += f
        return torch.cat(out, dim=-1), state

    # Offline use is the same code as torch's, over these steps.
    encode = AudioCodec.encode
    decode = AudioCodec.decode
    reconstruct = AudioCodec.reconstruct
