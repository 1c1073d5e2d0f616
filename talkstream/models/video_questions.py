"""The Thinker's video skill, made here: spoken questions about a short clip of a moving ball.

    talkstream data video-questions --out data/model     (writes video_{train,eval}.pt)

Each example is a clip (a ball of one of eight colours crossing a grey, softly textured background in one of four
directions) coded by the shipped video codec, and a question spoken by a TTS voice and coded by the audio codec:
"what colour is the ball?" -> "red.", "which way is the ball moving?" -> "left.". The clip lasts as long as the
question, as a camera would run while the user speaks. Answering needs the video (the colour, or the motion over
time: the positions' time order), and the question's audio (which of the two is asked).

Evaluation is voice-disjoint (held-out voices), sentence-disjoint (one phrasing per skill never trained on) and
clip-disjoint (other seeds).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

COLOURS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0), "black": (0.02, 0.02, 0.02), "orange": (1.0, 0.5, 0.0), "purple": (0.55, 0.1, 0.7),
}  # fmt: skip
DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}
QUESTIONS = {
    "colour": {"train": ["what colour is the ball?", "which colour is the ball?", "what colour is it?",
                         "what color is the ball?", "can you tell me what colour the ball is?",
                         "what is the colour of the ball?", "say the colour of the ball.", "what colour do you see?"],
               "eval": ["tell me the colour of the ball."]},
    "direction": {"train": ["which way is the ball moving?", "where is the ball going?", "which way does it go?",
                            "in which direction is the ball moving?", "where does the ball move?",
                            "which way is it going?", "say which way the ball goes.", "what direction is it going?"],
                  "eval": ["tell me where the ball is moving."]},
}  # fmt: skip


def ball_clip(colour: str, direction: str, frames: int, seed: int, size: int = 128) -> torch.Tensor:
    """float [T, 3, size, size] in [0, 1]: the ball crosses the frame in `direction`."""
    g = torch.Generator().manual_seed(seed)
    cells = int(torch.randint(2, 8, (1,), generator=g))
    grey = 0.35 + 0.3 * torch.rand(1, generator=g)
    texture = F.interpolate(torch.rand(1, 1, cells, cells, generator=g), size=(size, size), mode="bicubic",
                            align_corners=False)[0]
    bg = (grey + 0.15 * (texture - 0.5)).clamp(0, 1).expand(3, -1, -1)
    radius = 0.1 + 0.06 * float(torch.rand(1, generator=g))
    dy, dx = DIRECTIONS[direction]
    across = 0.25 + 0.5 * float(torch.rand(1, generator=g))  # where on the other axis it travels
    start, end = 0.2 + 0.1 * float(torch.rand(1, generator=g)), 0.7 + 0.1 * float(torch.rand(1, generator=g))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    colour_t = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    out = []
    for t in range(frames):
        along = start + (end - start) * t / max(1, frames - 1)
        if dx:  # horizontal: along x, forwards or backwards
            cx, cy = (along if dx > 0 else 1 - along), across
        else:
            cy, cx = (along if dy > 0 else 1 - along), across
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        out.append(torch.where(mask, colour_t, bg))
    return torch.stack(out)


def _examples(count: int, split: str, seed: int) -> list[tuple[str, str, str, str]]:
    """(skill, question, answer, colour/direction pair) picks, balanced over skills and answers."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        skill = "colour" if i % 2 == 0 else "direction"
        colour, direction = rng.choice(list(COLOURS)), rng.choice(list(DIRECTIONS))
        question = rng.choice(QUESTIONS[skill][split])
        answer = (colour if skill == "colour" else direction) + "."
        out.append((question, answer, colour, direction))
    return out


def build_video_questions(out: Path, audio_codec, video_codec, train: int = 1200, evaluate: int = 160,
                          seed: int = 0) -> Path:
    from talkstream.data.voices import EVAL_VOICES, TRAIN_VOICES
    from talkstream.models.av import tokens_to_features
    from talkstream.models.data import _encode, _say, _weighted_voices

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, count, voices, base in (("train", train, TRAIN_VOICES, seed), ("eval", evaluate, EVAL_VOICES, 10**6)):
        path = out / f"video_{split}.pt"
        if path.is_file():
            print(f"{path} exists, kept")
            continue
        rng = random.Random(base + 7)
        pool = [v for v in _weighted_voices(voices) if v.engine != "kokoro"]  # kokoro is slow; espeak/piper suffice
        items = []
        for i, (question, answer, colour, direction) in enumerate(tqdm(_examples(count, split, base), desc=split,
                                                                       unit="clip")):
            codes = _encode(audio_codec, _say(rng.choice(pool), question, rng))
            frames = max(4, round(codes.shape[-1] / audio_codec.frame_rate * video_codec.fps))
            clip = ball_clip(colour, direction, frames, seed=base + i)
            tokens = video_codec.encode(clip[None])[0]  # [T, h*w]
            items.append({"codes": codes, "text": question, "answer": answer,
                          "video": tokens_to_features(video_codec, tokens).to(torch.float16)})
        torch.save(items, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        print(f"{path}: {len(items)} clips with spoken questions")
    return out


def clip_to_uint8(clip: torch.Tensor) -> np.ndarray:
    """For writing a clip to a file: [T, 3, H, W] float -> [T, H, W, 3] uint8."""
    return (clip.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
