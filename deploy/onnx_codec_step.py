"""A first ONNX export of the codec's streaming step, its parity with torch, and its speed (issue 7 starts here).

    python deploy/onnx_codec_step.py [--out step.onnx] [--frames 200]

Exports encode_step + decode_step for one stream at 8 codebooks with every state tensor as an explicit input and
output (TorchScript exporter, opset 17), then runs the same audio frame by frame through onnxruntime (CPU, one
thread) and through torch eager, and reports the largest difference and the time per 13.3 ms frame.
The server's `--backend onnx` (its default) runs these steps batched: talkstream/codecs/audio/onnx_step.py.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from talkstream.codecs.audio.codec import CodecState
from talkstream.models.loaders import load_audio_codec


class JointStep(torch.nn.Module):
    def __init__(self, codec, num_encoder_states: int, num_codebooks: int):
        super().__init__()
        self.codec, self.ne, self.k = codec, num_encoder_states, num_codebooks

    def forward(self, pcm, *states):
        state = CodecState(self.k, pcm[..., :0], list(states[: self.ne]), list(states[self.ne :]))
        codes, state = self.codec.encode_step(pcm, state)
        out, state = self.codec.decode_step(codes, state)
        return (codes, out, *state.encoder, *state.decoder)


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="codec_step.onnx")
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec = load_audio_codec()
    hop, k = codec.frame_size, codec.num_codebooks
    state0 = codec.init_state(1, k)
    states = [*state0.encoder, *state0.decoder]
    names = [f"state{i}" for i in range(len(states))]
    torch.onnx.export(
        JointStep(codec, len(state0.encoder), k).eval(),
        (torch.zeros(1, 1, hop), *states),
        args.out,
        dynamo=False,
        opset_version=17,
        input_names=["pcm", *names],
        output_names=["codes", "pcm_out", *[f"new_{n}" for n in names]],
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.out, opts, providers=["CPUExecutionProvider"])
    used = {i.name for i in sess.get_inputs()}
    x = (0.1 * torch.randn(1, 1, args.frames * hop)).numpy()

    onnx_state, torch_state = [s.numpy() for s in states], codec.init_state(1, k)
    t_onnx = t_torch = 0.0
    worst, same_codes = 0.0, True
    for i in range(args.frames):
        frame = x[..., i * hop : (i + 1) * hop]
        t0 = time.perf_counter()
        feeds = {"pcm": frame, **{n: s for n, s in zip(names, onnx_state, strict=True) if n in used}}
        codes, out, *onnx_state = sess.run(None, feeds)
        t1 = time.perf_counter()
        with torch.inference_mode():
            ref_codes, torch_state = codec.encode_step(torch.from_numpy(frame), torch_state)
            ref, torch_state = codec.decode_step(ref_codes, torch_state)
        t2 = time.perf_counter()
        if i >= 5:  # skip warm-up
            t_onnx, t_torch = t_onnx + t1 - t0, t_torch + t2 - t1
        same_codes &= bool((codes == ref_codes.numpy()).all())
        worst = max(worst, float(np.abs(out - ref.numpy()).max()))
    n = args.frames - 5
    print(f"{args.out}: codes identical: {same_codes}; max |pcm difference| {worst:.2e}")
    print(
        f"per 13.3 ms frame, 1 thread: onnxruntime {1000 * t_onnx / n:.2f} ms, torch {1000 * t_torch / n:.2f} ms "
        f"({t_torch / t_onnx:.1f}x)"
    )


if __name__ == "__main__":
    main()
