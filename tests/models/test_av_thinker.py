"""The Thinker with video: positions follow time, blocks interleave video then audio, streaming equals training."""

import pytest
import torch
import torch.nn.functional as F

from talkstream.models import av
from talkstream.models import text as tx
from talkstream.models.thinker import Thinker, ThinkerConfig
from tests.models.tiny import tiny_thinker


def _av_thinker() -> Thinker:
    torch.manual_seed(0)
    # Blocks of 6 audio positions (320 ms), so a short test turn spans several.
    return Thinker(ThinkerConfig(latent_dim=16, dim=32, layers=2, heads=2, video_features=8,
                                 block_positions=6)).eval()


def test_positions_follow_time_and_blocks_put_video_first():
    cfg = ThinkerConfig(block_positions=6)
    # 160 ms video positions over 53.3 ms audio positions: video j starts in audio position 3j.
    assert av.video_position(torch.arange(4), cfg).tolist() == [0, 3, 6, 9]
    is_video, index, pos = av.interleave(audio=8, video=3, cfg=cfg)
    assert is_video.tolist() == [True, True] + [False] * 6 + [True] + [False] * 2
    assert index.tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 2, 6, 7]
    assert pos.tolist() == [0, 3, 0, 1, 2, 3, 4, 5, 6, 6, 7]
    # A stream that runs longer than the other still comes in, in its blocks.
    is_video, _, pos = av.interleave(audio=2, video=5, cfg=cfg)
    assert is_video.sum() == 5 and pos.tolist() == [0, 3, 0, 1, 6, 9, 12]


def _example(seed: int):
    torch.manual_seed(seed)
    latent = torch.randn(1, 16, 4 * 23)  # 23 audio positions (1.2 s)
    video = torch.randn(1, 4 * 8, 8)  # 8 video positions (1.3 s): runs a little past the audio
    text = tx.encode("red.")
    return latent, video, text


def test_listening_with_video_in_any_chunks_equals_one_call():
    thinker = _av_thinker()
    latent, video, _ = _example(1)
    whole = thinker.end_turn(thinker.listen(latent, thinker.init_state(), video))
    state, a, v = thinker.init_state(), 0, 0
    for da, dv in [(5, 1), (0, 7), (30, 2), (11, 0), (17, 9), (29, 13)]:  # frames of audio, frames of video
        state = thinker.listen(latent[..., a : a + da], state, video[:, v : v + dv])
        a, v = a + da, v + dv
    state = thinker.end_turn(state)
    assert (a, v) == (92, 32) and state.next_position == whole.next_position == 23
    assert state.cache.length == whole.cache.length == 23 + 8
    for k1, k2 in zip(state.cache.keys, whole.cache.keys, strict=True):
        assert torch.allclose(k1, k2, atol=1e-5)


def test_streaming_with_video_scores_the_reply_as_training_does():
    """forward_train's sequence (av.interleave) and listen's blocks are the same sequence: same loss."""
    thinker = _av_thinker()
    latent, video, text = _example(2)
    loss = thinker.forward_train(latent, torch.tensor([23]), torch.tensor([tx.CHAT]), torch.tensor([text]),
                                 torch.tensor([len(text)]), video, torch.tensor([8]))
    state = thinker.end_turn(thinker.listen(latent, thinker.init_state(), video))
    x = thinker.embed(torch.tensor([[tx.CHAT, tx.BOS, *text]]))
    pos = torch.arange(state.next_position, state.next_position + x.shape[1])[None]
    with torch.no_grad():
        h, _ = thinker.transformer(x, pos, state.cache)
        streamed = F.cross_entropy(thinker.head(h[0, 1:]), torch.tensor([*text, tx.EOS]))
    assert torch.allclose(loss, streamed, atol=1e-5)
    # ... and the video matters: other frames, another loss.
    other = thinker.forward_train(latent, torch.tensor([23]), torch.tensor([tx.CHAT]), torch.tensor([text]),
                                  torch.tensor([len(text)]), torch.randn_like(video), torch.tensor([8]))
    assert not torch.allclose(loss, other)


def test_a_thinker_without_a_video_track_refuses_video_clearly():
    thinker = tiny_thinker()
    with pytest.raises(ValueError, match="no video track"):
        thinker.listen(torch.randn(1, 16, 8), thinker.init_state(), torch.randn(1, 4, 8))


def test_audio_alone_goes_into_the_cache_at_once():
    thinker = _av_thinker()
    state = thinker.listen(torch.randn(1, 16, 10), thinker.init_state())
    assert state.cache.length == 2 and state.next_position == 2 and not state.queue
    assert thinker.end_turn(state) is state


def test_builtin_thinker_hears_a_turn_with_video_tokens():
    from talkstream.chat.responder import BuiltinThinker
    from talkstream.checkpoint import load_video_codec

    video_codec = load_video_codec()
    torch.manual_seed(0)
    thinker = Thinker(ThinkerConfig(latent_dim=16, dim=32, layers=2, heads=2, video_features=64)).eval()
    builtin = BuiltinThinker(thinker, torch.randn(8, 1024, 16), video_codec)
    codes = torch.randint(0, 1024, (1, 8, 75))  # 1 s of audio
    tokens = torch.randint(0, video_codec.codebook_size, (25, 256))  # 1 s of video
    heard = builtin.hear(codes, tokens)
    assert heard.state.video_positions == 7 and heard.state.audio_positions == 19  # 25 frames padded to 28
    with_video = builtin.transcript(heard)
    other = builtin.hear(codes, torch.randint(0, video_codec.codebook_size, (25, 256)))
    assert thinker.end_turn(other.state).cache.length == thinker.end_turn(heard.state).cache.length == 26
    assert builtin.hear(codes).state.video_positions == 0
    assert isinstance(with_video, str)
    with pytest.raises(ValueError, match="no video track"):
        BuiltinThinker(tiny_thinker(), torch.randn(8, 1024, 16)).hear(codes, tokens)


def test_video_file_tokens_follow_time_at_any_frame_rate(tmp_path):
    import av as pyav
    import numpy as np

    from talkstream.checkpoint import load_video_codec
    from talkstream.models.av import video_tokens_for_turn

    path = tmp_path / "clip.mp4"
    with pyav.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):  # 0.5 s at 10 fps
            img = np.full((48, 64, 3), 20 + 40 * i, np.uint8)
            for p in s.encode(pyav.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    codec = load_video_codec()
    assert video_tokens_for_turn(path, codec, 0.4).shape == (10, 256)  # 25 fps: 10 frames, cut at the turn's end
    assert video_tokens_for_turn(path, codec, 1.0).shape == (25, 256)  # the last frame held past the clip's end
    with pytest.raises(Exception, match="not a readable video|no video stream"):
        (tmp_path / "x.mp4").write_bytes(b"not a video at all")
        video_tokens_for_turn(tmp_path / "x.mp4", codec, 1.0)


def test_listening_with_video_through_the_onnx_block_graph_equals_torch():
    from talkstream.models.onnx_steps import onnx_step

    thinker = _av_thinker()
    latent, video, _ = _example(3)
    ref = thinker.end_turn(thinker.listen(latent, thinker.init_state(), video))
    thinker.onnx_listen = onnx_step(thinker, block=True)
    try:
        state = thinker.listen(latent[..., :40], thinker.init_state(), video[:, :9])
        state = thinker.end_turn(thinker.listen(latent[..., 40:], state, video[:, 9:]))
    finally:
        thinker.onnx_listen = None
    assert state.cache.length == ref.cache.length == 31
    for a, b in zip(state.cache.keys + state.cache.values, ref.cache.keys + ref.cache.values, strict=True):
        assert (a - b).abs().max() < 1e-4
