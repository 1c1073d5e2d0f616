"""onnxruntime execution providers and session options for real-time streaming steps.

Provider order is configurable; by default TensorRT, then CUDA, then CPU, keeping those onnxruntime reports as
available (`onnxruntime.get_available_providers()`): the CPU wheel has only CPU, `pip install .[gpu]` adds CUDA and
TensorRT. A provider that was asked for but is not available is skipped, and a session that fails to start on a GPU
provider is retried on the next one (TensorRT, then CUDA, then CPU), each with a logged warning (safe: the graphs
are the same and CPU runs every op); with `strict=True` an unavailable provider is an error instead.

Session options for real time: a fixed number of intra-op threads per session (1 by default: one stream or one
batched step per core, no oversubscription), one inter-op thread, sequential execution, and no spinning, so an idle
session between 13.3 ms frames gives its core back instead of busy-waiting for the next call.
"""

from __future__ import annotations

import logging
from pathlib import Path

from talkstream.errors import UserError

log = logging.getLogger(__name__)

ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"


class ProviderError(UserError, ValueError):
    """A provider name is unknown, or (strict) one asked for is unavailable. The message is for the user."""


def resolve(name: str) -> str:
    full = ALIASES.get(name.strip().lower(), name.strip())
    if not full.endswith("ExecutionProvider"):
        raise ProviderError(f"unknown execution provider {name!r} (use tensorrt, cuda, cpu or a full onnxruntime name)")
    return full


def select_providers(order: list[str] | tuple[str, ...] | str | None = None, strict: bool = False) -> list[str]:
    """Providers to use, in order: `order` (names or aliases, or a comma-separated string) filtered by availability.

    Falls back to CPU (logged) when nothing asked for is available, unless `strict`.
    """
    import onnxruntime as ort

    explicit = order is not None
    if isinstance(order, str):
        order = [p for p in order.split(",") if p.strip()]
    wanted = [resolve(p) for p in (order or DEFAULT_ORDER)]
    available = ort.get_available_providers()
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if explicit and missing:
        if strict:
            raise ProviderError(
                f"execution provider(s) {', '.join(missing)} not available (have {', '.join(available)})"
            )
        log.warning(
            "execution provider(s) %s not available here; using %s", ", ".join(missing), ", ".join(chosen) or CPU
        )
    if not chosen:
        chosen = [CPU]
    if chosen[0] != CPU and hasattr(ort, "preload_dlls"):
        _preload_gpu_libraries(ort)
    return chosen


def _preload_gpu_libraries(ort) -> None:
    """onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels only once they are loaded (deploy/Dockerfile.gpu
    installs them that way); a machine with a system CUDA needs nothing, so a failure here is only logged."""
    try:
        ort.preload_dlls(directory="")  # the nvidia-* wheels first, then the system's loader path
    except Exception as e:  # missing libraries show up again, clearly, when the session starts
        log.info("onnxruntime.preload_dlls: %s", e)


def session_options(threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def _provider_options(providers: list[str], cache_dir: Path | None) -> list[dict]:
    opts = []
    for p in providers:
        if p == "TensorrtExecutionProvider" and cache_dir is not None:
            # Building a TensorRT engine takes seconds to minutes: keep them beside the graphs for the next start.
            opts.append({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir / "trt-cache")})
        else:
            opts.append({})
    return opts


def open_session(model: bytes | str | Path, providers: list[str], threads: int = 1, name: str = "graph"):
    """An InferenceSession on `providers` (see `select_providers`); a GPU start-up failure falls back to CPU, logged.

    A graph onnxruntime cannot load at all (corrupted, an opset or op it does not know) is an `ExportError`.
    """
    import onnxruntime as ort

    from talkstream.export.graphs import ExportError

    src = model if isinstance(model, bytes) else str(model)
    cache = Path(model).parent if not isinstance(model, bytes) else None
    # A provider that fails to start is dropped and the next ones tried (TensorRT -> CUDA -> CPU); CPU comes last.
    attempts = [providers[i:] + ([CPU] if CPU not in providers[i:] else []) for i in range(len(providers))]
    attempts = [a for i, a in enumerate(attempts) if a not in attempts[:i]]
    for i, provs in enumerate(attempts):
        try:
            sess = ort.InferenceSession(
                src, session_options(threads), providers=provs, provider_options=_provider_options(provs, cache)
            )
        except Exception as e:  # onnxruntime raises its own exception types, not one base class
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if i + 1 < len(attempts) and "INVALID_PROTOBUF" not in msg and "INVALID_GRAPH" not in msg:
                log.warning(
                    "%s: could not start on %s (%s); falling back to %s", name, provs[0], msg, attempts[i + 1][0]
                )
                continue
            raise ExportError(f"{name}: onnxruntime {ort.__version__} cannot load this graph: {msg}") from None
        got = sess.get_providers()
        if got[0] != provs[0]:
            log.warning("%s: runs on %s, not %s as asked", name, got[0], provs[0])
        return sess
    raise AssertionError("unreachable")
