"""Streaming steps as ONNX graphs: one spec per graph, one export function, one manifest that is verified on load.

Opset 17 (TorchScript exporter, `dynamo=False`: it traces the same Python step code that torch runs). Every state a
step carries is an explicit input and an output of the graph, so a graph is a pure function and any runtime can hold
one stream's state, or many stacked on the batch axis (axis 0 is dynamic in every graph).

An export folder holds `<graph>.onnx` (float32), optionally `<graph>.int8.onnx` (onnxruntime dynamic int8
quantization of the same graph), and `manifest.json`:

    {"format": "talkstream-onnx", "format_version": 1, "talkstream_version": "0.1.0", "opset": 17,
     "component": "codec", "source": {... checksums of the weights the graphs came from ...},
     "graphs": [{"name", "precision": "fp32"|"int8", "file", "sha256", "bytes",
                 "inputs": [{"name", "shape": [ "batch", 1, 640 ], "dtype"}], "outputs": [...], "meta": {...}}]}

`read_manifest` refuses a folder whose manifest is missing or unreadable, of another format version, written by
another talkstream version, for another component or other weights, or whose files are missing or do not match
their checksums: each with one `ExportError` line.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import Tensor

from talkstream.checkpoint import sha256_file  # noqa: F401  (re-exported: one checksum function)
from talkstream.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "talkstream-onnx"
FORMAT_VERSION = 1
OPSET = 17
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "int8")


class ExportError(UserError, ValueError):
    """An export folder or graph cannot be used as it is. The message is for the user."""


def talkstream_version() -> str:
    try:
        return version("talkstream")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dict_sha256(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> str:
    """Checksum of a module's weights as they are in memory (name, dtype, shape, bytes): what a graph was made from.

    `skip`: name suffixes of tensors the graphs do not use (training-only buffers that checkpoints do not ship)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip and name.endswith(skip):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@dataclass
class GraphSpec:
    """One streaming step to export. `name` is unique within a component and names the file (`<name>.onnx`)."""

    name: str
    module: torch.nn.Module
    args: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    meta: dict = field(default_factory=dict)  # free-form: what the graph computes (op, codebooks, frames, ...)
    # Regular expressions for node names that stay float32 in the int8 graph (e.g. a quantizer's distances).
    int8_keep_float: tuple[str, ...] = ()


def export_bytes(spec: GraphSpec) -> bytes:
    """The float32 ONNX graph of `spec`, in memory."""
    buf = io.BytesIO()
    # The tracer warns about Python-level shape checks; they hold for every batch size, so they are silenced.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module.eval(),
            spec.args,
            buf,  # type: ignore[arg-type]  # torch's stub says a path, but the TorchScript exporter takes a file object
            dynamo=False,
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes,
        )
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(buf.getvalue())
    # The tracer leaves output lengths symbolic; one run fills in the real ones, so the graph describes itself.
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    used = {i.name for i in sess.get_inputs()}
    feeds = {n: a.numpy() for n, a in zip(spec.input_names, spec.args, strict=True) if n in used}
    for value, result in zip(model.graph.output, sess.run(None, feeds), strict=True):
        for axis, (dim, size) in enumerate(zip(value.type.tensor_type.shape.dim, result.shape, strict=True)):
            if axis not in spec.dynamic_axes.get(value.name, {}):
                dim.Clear()
                dim.dim_value = size
    onnx.checker.check_model(model, full_check=True)
    for k, v in {"talkstream_version": talkstream_version(), "talkstream_graph": spec.name}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


def quantize_int8(fp32: bytes, spec: GraphSpec) -> bytes:
    """Dynamic int8 quantization (weights int8, activations quantized per call) of MatMul/Gemm nodes, except the
    nodes `spec` keeps in float. Convolutions stay float: with ConvInteger too, the codec's batched step got slower
    on onnxruntime's CPU provider (16 streams, 2 frames: 20.1 ms against 14.7 ms with MatMul alone)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(fp32)
    keep = [re.compile(p) for p in spec.int8_keep_float]
    exclude = [n.name for n in model.graph.node if any(p.search(n.name) for p in keep)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        logging.disable(logging.WARNING)  # it advises pre-processing on the root logger, every time
        try:
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=exclude,
            )
        finally:
            logging.disable(logging.NOTSET)
        out = onnx.load(str(dst))
    onnx.checker.check_model(out)
    return out.SerializeToString()


def _io(values) -> list[dict]:
    import onnx

    rows = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        rows.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
    return rows


def describe(data: bytes) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a serialized graph: names, shapes (axis names where dynamic), dtypes."""
    import onnx

    g = onnx.load_from_string(data).graph
    return _io(g.input), _io(g.output)


def export_graphs(
    component: str, specs: list[GraphSpec], out_dir: str | Path, source: dict, int8: bool = False, progress=None
) -> dict:
    """Write every spec's graph (and its int8 copy) into `out_dir` with `manifest.json`. Returns the manifest.

    `source` identifies what the graphs were made from (it must hold a `state_sha256`, see `state_dict_sha256`);
    `read_manifest` compares it with the weights the runtime has loaded.
    """
    if "state_sha256" not in source:
        raise ValueError("source must carry the weights' state_sha256")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("graph names must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graphs = []
    for spec in specs:
        fp32 = export_bytes(spec)
        variants = [("fp32", fp32)] + ([("int8", quantize_int8(fp32, spec))] if int8 else [])
        for precision, data in variants:
            file = f"{spec.name}.onnx" if precision == "fp32" else f"{spec.name}.int8.onnx"
            (out / file).write_bytes(data)
            inputs, outputs = describe(data)
            graphs.append(
                {
                    "name": spec.name,
                    "precision": precision,
                    "file": file,
                    "sha256": sha256_bytes(data),
                    "bytes": len(data),
                    "inputs": inputs,
                    "outputs": outputs,
                    "meta": spec.meta,
                }
            )
        if progress is not None:
            progress(spec.name)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "talkstream_version": talkstream_version(),
        "opset": OPSET,
        "component": component,
        "source": source,
        "graphs": graphs,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(export_dir: str | Path, component: str, state_sha256: str | None = None) -> dict:
    """Read and verify an export folder: format, talkstream version, component, source weights, every file's sha256.

    Returns the manifest with each graph's `path` filled in.
    """
    d = Path(export_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise ExportError(f"{d}: not a talkstream ONNX export (no {MANIFEST}; make one with `talkstream export`)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ExportError(f"{path}: not a talkstream ONNX manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{path}: manifest format {m.get('format_version')!r}, this talkstream reads {FORMAT_VERSION}"
        )
    if m.get("talkstream_version") != talkstream_version():
        raise ExportError(
            f"{d}: graphs exported by talkstream {m.get('talkstream_version')!r}, this is {talkstream_version()!r}; "
            "export them again with this version"
        )
    if m.get("component") != component:
        raise ExportError(f"{d}: holds {m.get('component')!r} graphs, expected {component!r}")
    if state_sha256 is not None and m.get("source", {}).get("state_sha256") != state_sha256:
        raise ExportError(f"{d}: graphs were exported from other weights than the ones loaded; export them again")
    graphs = m.get("graphs")
    keys = ("name", "precision", "file", "sha256", "meta")
    if not isinstance(graphs, list) or not all(isinstance(g, dict) and all(k in g for k in keys) for g in graphs):
        raise ExportError(f"{path}: malformed graph list (each entry needs {', '.join(keys)})")
    for g in graphs:
        f = d / g["file"]
        if not f.is_file():
            raise ExportError(f"{f}: graph file missing")
        if sha256_file(f) != g["sha256"]:
            raise ExportError(f"{f}: checksum mismatch (corrupted or replaced graph)")
        g["path"] = str(f)
    return m
