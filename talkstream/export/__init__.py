"""ONNX export and the onnxruntime runtime shared by every component (codec now; Thinker/Talker later).

- `graphs.py`: a component describes each streaming step as a `GraphSpec` (module, example inputs, input/output
  names with every state tensor explicit, dynamic axes); `export_graphs` writes the graphs, checks them with
  `onnx.checker`, optionally adds int8 copies, and writes `manifest.json` (files, names, shapes, sha256, talkstream
  version, the checksum of the weights they came from). `read_manifest` verifies all of it before anything runs.
- `providers.py`: execution-provider order (TensorRT, CUDA, CPU by default, filtered by what onnxruntime has) and
  real-time session options.

The codec's graphs: `talkstream.codecs.audio.onnx_step` (`codec_graph_specs`, `export_codec`, `OnnxCodecSteps`).
A model adds its graphs the same way: build `GraphSpec`s for its single-step decoders (KV caches as explicit
inputs/outputs with a dynamic sequence axis) and call `export_graphs(component="model", ...)` from
`talkstream export model`; loading goes through `read_manifest(dir, "model", source)` and `providers.open_session`.
"""
