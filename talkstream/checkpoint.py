"""Checkpoints: a folder with `config.json` (kind, config, checksum) and `model.safetensors`, loaded by one function.

Weights ship as float16 (half the size; the models run in float32) without training-only buffers. The SHA-256 of
the weights file is in config.json and is verified on every load.

One module for every weight kind (codecs, Thinker, Talker, the voice decoder): the format and its checks sit at the
bottom of the package, and each `load_*` imports its model class inside the function, so codecs, models, export and
services all load through here without this module importing any of them at import time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from talkstream.errors import UserError

FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Buffers that only training needs (EMA statistics); not shipped.
_TRAINING_ONLY = ("quantizer.cluster_size", "quantizer.embed_sum")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupted, or of another kind or version. The message is for the user."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, config: dict, out_dir: str | Path, kind: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith(_TRAINING_ONLY)
    }
    weights = out / "model.safetensors"
    save_file(tensors, str(weights))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "weights": weights.name,
        "sha256": sha256_file(weights),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_checkpoint(path: str | Path, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Verify and read a checkpoint folder -> (model config dict, float32 state dict)."""
    path = Path(path)
    meta_path = path / "config.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a talkstream checkpoint (no config.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e.msg})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {meta.get('kind')!r}, expected a {kind!r}")
    weights = path / meta.get("weights", "model.safetensors")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    if sha256_file(weights) != meta.get("sha256"):
        raise CheckpointError(f"{weights}: checksum mismatch (corrupted or replaced weights)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    return meta["config"], state


def load_audio_codec(path: str | Path | None = None, device: str = "cpu"):
    """The shipped codec (or the checkpoint at `path`), in eval mode."""
    from talkstream.codecs.audio.codec import AudioCodec, AudioCodecConfig

    config, state = read_checkpoint(path or WEIGHTS_DIR / "audio_codec", "audio_codec")
    codec = AudioCodec(AudioCodecConfig.from_dict(config))
    missing, unexpected = codec.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(_TRAINING_ONLY)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return codec.to(device).eval()


def _load_model(kind: str, path: str | Path | None, build):
    config, state = read_checkpoint(path or WEIGHTS_DIR / kind, kind)
    model = build(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def load_thinker(path: str | Path | None = None):
    """The shipped Thinker (or the checkpoint at `path`), in eval mode."""
    from talkstream.models.thinker import Thinker, ThinkerConfig

    return _load_model("thinker", path, lambda c: Thinker(ThinkerConfig.from_dict(c)))


def load_talker(path: str | Path | None = None):
    """The shipped Talker (or the checkpoint at `path`), in eval mode."""
    from talkstream.models.talker import Talker, TalkerConfig

    return _load_model("talker", path, lambda c: Talker(TalkerConfig.from_dict(c)))


def load_video_codec(path: str | Path | None = None, device: str = "cpu"):
    """The shipped video codec (or the checkpoint at `path`), in eval mode."""
    from talkstream.codecs.video.codec import VideoCodec, VideoCodecConfig

    return _load_model("video_codec", path, lambda c: VideoCodec(VideoCodecConfig.from_dict(c))).to(device)


def load_video_codec_v2(path: str | Path | None = None, device: str = "cpu"):
    """The shipped video codec v2 (or the checkpoint at `path`), in eval mode."""
    from talkstream.codecs.video.codec_v2 import VideoCodecV2, VideoCodecV2Config

    return _load_model("video_codec_v2", path, lambda c: VideoCodecV2(VideoCodecV2Config.from_dict(c))).to(device)


def load_voice_codec(path: str | Path | None = None):
    """The codec whose decoder is fine-tuned on the Talker's voice (talkstream/codecs/audio/voice.py)."""
    return load_audio_codec(path or WEIGHTS_DIR / "voice_codec")


def load_codec_v1(path: str | Path | None = None):
    """Codec v1 (its encoder and codebooks), which the v1 learned Thinker hears through (video questions, `--thinker
    legacy`); its decoder is the one the earlier Talker spoke through."""
    return load_audio_codec(path or WEIGHTS_DIR / "codec_v1")
