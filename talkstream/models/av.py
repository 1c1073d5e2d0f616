"""Video beside audio in the Thinker: frame features, time-aligned positions and the interleave order (TMRoPE).

Qwen2.5-Omni's TMRoPE gives audio and video the positions of the times they cover and interleaves the two streams
in chunks of a fixed duration (video, then audio, per 2 s chunk). The Thinker's RoPE is one-dimensional, so this
keeps the time axis only:

- **Features.** A video frame's tokens (the video codec's FSQ codes, a 16x16 grid) become their FSQ values
  [4, 16, 16], average-pooled to a 4x4 grid: 64 numbers per frame that keep where colours and edges are, coarsely.
  `video_stack` frames (4 at 25 fps: 160 ms) make one video position.
- **Positions.** An audio position covers `stack` codec frames (53.3 ms); a video position takes the index of the
  audio position its start time falls in: video position j sits at round(j * 160 / 53.3) = 3j. Equal times, equal
  positions, whatever order the two streams arrive in.
- **Order.** Time is cut into blocks of `block_positions` audio positions (36: 1.92 s); each block contributes its
  video positions, then its audio positions. Training builds the sequence with `interleave`; streaming (`Thinker.
  listen` with video) appends whole blocks in the same order, so streaming equals offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from talkstream.errors import UserError

POOL = 4  # the token grid is pooled to POOL x POOL cells


def frame_features(values: Tensor) -> Tensor:
    """FSQ values [T, C, h, w] of T frames -> features [T, C * POOL * POOL]."""
    return F.adaptive_avg_pool2d(values, POOL).flatten(1)


def tokens_to_features(video_codec, tokens: Tensor) -> Tensor:
    """Video tokens long [T, h*w] (the codec's frames) -> frame features [T, feature_size]."""
    h, w = video_codec.grid
    values = video_codec.quantizer.codes_to_values(tokens.long().view(-1, h, w))
    return frame_features(values)


def video_position(j: int | Tensor, cfg) -> Tensor:
    """The audio-position index the start of video position j falls in."""
    seconds_per_video = cfg.video_stack / cfg.video_fps
    seconds_per_audio = cfg.stack / cfg.audio_frame_rate
    return torch.floor(torch.as_tensor(j, dtype=torch.float64) * seconds_per_video / seconds_per_audio + 1e-6).long()


def interleave(audio: int, video: int, cfg) -> tuple[Tensor, Tensor, Tensor]:
    """The order of `audio` audio positions and `video` video positions in the sequence.

    -> (is_video bool [N], index into its stream long [N], RoPE position long [N]), N = audio + video.
    """
    vpos = video_position(torch.arange(video), cfg)
    apos = torch.arange(audio)
    block = cfg.block_positions
    blocks = max(int(apos[-1]) // block + 1 if audio else 0, int(vpos[-1]) // block + 1 if video else 0)
    kinds, index, pos = [], [], []
    for b in range(blocks):
        v = torch.nonzero((vpos >= b * block) & (vpos < (b + 1) * block)).flatten()
        a = torch.arange(b * block, max(b * block, min(audio, (b + 1) * block)))
        kinds += [True] * len(v) + [False] * len(a)
        index += [*v.tolist(), *a.tolist()]
        pos += [*vpos[v].tolist(), *a.tolist()]
    return torch.tensor(kinds, dtype=torch.bool), torch.tensor(index, dtype=torch.long), torch.tensor(pos)


def video_tokens_for_turn(path, video_codec, seconds: float) -> Tensor:
    """A video file -> the video codec's tokens [T, h*w] at its frame rate for a turn of `seconds`: frames picked by
    time (any source rate), cut at the turn's end, the last frame held if the video is shorter."""
    from talkstream.codecs.video.files import fit_frame, read_frames

    frames, fps, _ = read_frames(path)
    want = max(1, round(seconds * video_codec.fps))
    picked: list[Tensor] = []
    for i, rgb in enumerate(frames):
        # Source frame i shows times [i / fps, (i + 1) / fps): it fills every codec frame starting in that span.
        while len(picked) < want and len(picked) / video_codec.fps < (i + 1) / float(fps):
            picked.append(fit_frame(rgb, video_codec.frame_size)[0])
        if len(picked) == want:
            break
    if not picked:
        raise UserError(f"{path}: no frames")
    picked += [picked[-1]] * (want - len(picked))
    with torch.no_grad():
        return video_codec.encode(torch.stack(picked)[None])[0]
