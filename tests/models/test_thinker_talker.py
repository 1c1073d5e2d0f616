"""The Thinker-Talker's parts: text, dialogue splits, espeak-ng timing, caches, streaming = offline, the responder."""

import asyncio
import time

import pytest
import torch

from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker, collect
from talkstream.errors import UserError
from talkstream.models import text as tx
from talkstream.models.dialogue import dialogues
from talkstream.models.phonemes import phonemize, speak
from talkstream.models.talker import SamplingConfig, TalkerState
from talkstream.models.talker_units import text_units, word_units
from talkstream.models.transformer import Transformer, sample
from tests.models.tiny import tiny_talker as _talker
from tests.models.tiny import tiny_thinker as _thinker


def test_normalize_spells_numbers_and_keeps_hyphenated_words():
    assert tx.normalize("What is 17+25?") == "what is seventeen plus twenty five?"
    assert tx.normalize("twenty-five; 9 - 4 = 5!") == "twenty five, nine minus four equals five!"
    assert tx.decode(tx.encode("Hello, World")) == "hello, world"
    assert tx.normalize("\u00e9\u00e8 \U0001f600") == ""  # nothing speakable is left, and nothing crashes


def test_dialogue_splits_are_sentence_disjoint_and_deterministic():
    train, held_out = dialogues(2000, "train"), dialogues(200, "eval")
    assert {q for q, _ in train}.isdisjoint({q for q, _ in held_out})
    assert dialogues(50, "train") == train[:50]
    for q, a in train + held_out:  # every answer is the exact string the bench scores against
        assert a == tx.normalize(a) and q == tx.normalize(q)
    with pytest.raises(ValueError):
        dialogues(1, "test")


def test_espeak_reports_every_phoneme_with_its_time():
    u = speak("hello there, seven")
    assert len(u.phonemes) == len(u.words) == len(u.starts) > 8
    assert (u.starts[1:] >= u.starts[:-1]).all() and u.starts[-1] <= len(u.audio)
    assert max(u.words) == 2 and "_:" in u.phonemes  # three words, a pause at the comma
    assert abs(len(u.audio) / 24000 - 1.5) < 1.0
    with pytest.raises(UserError, match="no voice"):
        phonemize("x", voice="no-such-voice")


def test_kv_cache_steps_equal_the_whole_sequence():
    torch.manual_seed(0)
    m = Transformer(32, 2, 4).eval()
    x, pos = torch.randn(1, 9, 32), torch.arange(9)[None] * 3  # positions need not be consecutive
    full, _ = m(x, pos)
    h1, c = m(x[:, :5], pos[:, :5])
    h2, c = m(x[:, 5:6], pos[:, 5:6], c)
    h3, _ = m(x[:, 6:], pos[:, 6:], c)
    assert torch.allclose(torch.cat([h1, h2, h3], 1), full, atol=1e-5)


def test_sampling_is_deterministic_for_a_seed_and_greedy_at_zero_temperature():
    logits = torch.randn(4, 50)
    a = sample(logits, torch.Generator().manual_seed(1), 1.0, top_k=10, top_p=0.9)
    b = sample(logits, torch.Generator().manual_seed(1), 1.0, top_k=10, top_p=0.9)
    assert torch.equal(a, b)
    assert torch.equal(sample(logits, None, 0.0), logits.argmax(-1))
    top1 = sample(logits, torch.Generator().manual_seed(2), 1.0, top_k=1)
    assert torch.equal(top1, logits.argmax(-1))


def test_thinker_listening_in_pieces_equals_listening_at_once():
    m = _thinker()
    latent = torch.randn(1, 16, 23)
    whole = m.listen(latent, m.init_state())
    st = m.init_state()
    for a, b in [(0, 3), (3, 4), (4, 17), (17, 23)]:
        st = m.listen(latent[..., a:b], st)
    assert st.audio_positions == whole.audio_positions == 5 and st.pending.shape[-1] == 3
    ra = [(t, h) for t, h in m.reply(whole, tx.ASR, max_chars=10)]
    rb = [(t, h) for t, h in m.reply(st, tx.ASR, max_chars=10)]
    assert [t for t, _ in ra] == [t for t, _ in rb]
    assert all(torch.allclose(x, y, atol=1e-5) for (_, x), (_, y) in zip(ra, rb, strict=True))


def test_thinker_learns_to_transcribe_one_utterance():
    m = _thinker().train()
    latent = torch.randn(1, 16, 20)
    target = tx.encode("hi there")
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    args = (latent, torch.tensor([5]), torch.tensor([tx.ASR]), torch.tensor([target]), torch.tensor([len(target)]))
    first = m.forward_train(*args).item()
    for _ in range(80):
        loss = m.forward_train(*args)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 5
    assert m.eval().transcribe(latent)[0] == "hi there"


def test_talker_streams_the_same_frames_as_one_call():
    m = _talker()
    ids = m.phoneme_ids(["^", "h", "ə", "l", "o", "ʊ", ",", " ", "$"])
    dur = torch.tensor([1, 2, 3, 2, 4, 2, 1, 0, 2])
    whole = torch.stack(list(m.frames(ids, None, durations=dur)))
    st = TalkerState()
    parts = list(m.frames(ids[:6], None, state=st, durations=dur, final=False))
    assert st.phoneme == 6 - m.lookahead  # the last units wait for their right context
    parts += list(m.frames(ids, None, state=st, durations=dur))
    assert whole.shape == (17, 3) and torch.equal(torch.stack(parts), whole)
    assert whole.max() < 64


def test_talker_tokens_are_the_codebooks_nearest_to_its_latent():
    m = _talker()
    z = torch.randn(5, 16)
    codes = m.quantize(z)
    r = z.clone()
    for k in range(3):  # stage by stage, the nearest code to what the stages before left
        assert torch.equal(codes[:, k], torch.cdist(r, m.codebooks[k]).argmin(1))
        r = r - m.codebooks[k][codes[:, k]]


def test_talker_is_deterministic_for_a_text():
    m = _talker()
    ids = m.phoneme_ids(text_units("hello there, seven."))
    one = torch.stack(list(m.frames(ids, None)))
    two = torch.stack(list(m.frames(ids, None)))
    assert one.shape[0] > 10 and torch.equal(one, two)
    faster = torch.stack(list(m.frames(ids, None, SamplingConfig(speed=2.0))))
    assert faster.shape[0] < one.shape[0]


def test_a_commas_pause_lasts_at_least_comma_frames_and_nothing_else_moves():
    m = _talker()  # every unit lasts 2 frames
    ids = m.phoneme_ids(text_units("hello there, seven."))
    assert int((ids == m.phoneme_index[","]).sum()) == 1
    plain = torch.stack(list(m.frames(ids, None, SamplingConfig(comma_frames=0))))
    paused = torch.stack(list(m.frames(ids, None, SamplingConfig(comma_frames=9))))
    assert paused.shape[0] == plain.shape[0] + 7
    short = torch.stack(list(m.frames(ids, None, SamplingConfig(comma_frames=1))))
    assert torch.equal(short, plain)  # a minimum below what the voice learned changes nothing


def test_latent_scale_scales_the_regressed_latent_before_it_is_quantized():
    m = _talker()
    ids = m.phoneme_ids(text_units("hello there, seven."))
    latents = []
    predict = m.latent
    m.latent = lambda h: latents.append(predict(h)[0]) or latents[-1][None]
    assert m.cfg.latent_scale == 1.0  # a Talker as trained speaks its latent as predicted
    plain = torch.stack(list(m.frames(ids, None)))
    m.latent = predict
    m.cfg.latent_scale = 1.5
    scaled = torch.stack(list(m.frames(ids, None)))
    assert torch.equal(plain, m.quantize(torch.cat(latents)))
    assert torch.equal(scaled, m.quantize(1.5 * torch.cat(latents)))
    assert not torch.equal(scaled, plain)


def test_speaker_word_by_word_equals_the_whole_text():
    speaker = Speaker(_talker(), block_frames=4)

    async def pieces():
        for p in ["hel", "lo the", "re, sev", "en"]:
            yield p, None

    streamed = collect(speaker.speak(pieces()))
    whole = collect(speaker.say("Hello there, seven"))
    assert len(streamed) > 2 and all(b.shape[:2] == (1, 3) and b.shape[-1] <= 4 for b in streamed)
    assert torch.equal(torch.cat(streamed, -1), torch.cat(whole, -1))
    assert word_units("seven", ",")[-2:] == [",", " "]


def test_chat_responder_streams_events_and_blocks():
    codebook = torch.randn(8, 1024, 16)
    responder = ChatResponder(BuiltinThinker(_thinker(), codebook), Speaker(_talker(), block_frames=4))
    turn = torch.randint(0, 1024, (1, 8, 40))
    t0 = time.perf_counter()
    out = asyncio.run(_collect(responder.respond(turn)))
    took_ms = 1000 * (time.perf_counter() - t0)
    events = [o for o in out if isinstance(o, dict)]
    kinds = [e["type"] for e in events]
    assert kinds == ["latency", "reply_text", "transcript", "reply_text"] and events[-1]["final"]
    assert not events[1]["final"] and out.index(events[0]) > 0  # the events follow the first audio block
    blocks = [o for o in out if isinstance(o, torch.Tensor)]
    assert blocks, "an untrained Talker still speaks the closing pause"
    assert kinds[0] == "latency" and 0 < events[0]["first_packet_ms"] <= took_ms  # in ms, within the whole answer
    assert all(b.shape[1] == responder.num_codebooks for b in blocks)


async def _collect(it):
    return [x async for x in it]
