"""The dual track: the Thinker's hidden states reach the Talker, in training data and while speaking."""

import asyncio

import pytest
import torch

from talkstream.chat.responder import BuiltinThinker, ChatResponder, Speaker, collect
from talkstream.models import text as tx
from tests.models.tiny import tiny_talker, tiny_thinker


def test_teacher_forced_hidden_is_what_reply_yields_beside_each_character():
    thinker = tiny_thinker()
    latent = torch.randn(1, 16, 12)
    pairs = list(thinker.reply(thinker.listen(latent, thinker.init_state()), tx.ASR, max_chars=20))
    assert pairs, "a random Thinker still writes something before <eos> or the limit"
    tokens = [t for t, _ in pairs]
    forced = thinker.teacher_forced_hidden(latent, tokens)
    assert torch.allclose(forced, torch.stack([h for _, h in pairs]), atol=1e-5)


def test_zero_hidden_states_are_the_same_as_none():
    talker = tiny_talker()
    ids = torch.tensor([[2, 4, 5, 6, 3]])
    ctx_none, dur_none = talker.text_context(ids, None)
    ctx_zero, dur_zero = talker.text_context(ids, torch.zeros(1, 5, 32))
    assert torch.equal(ctx_none, ctx_zero) and torch.equal(dur_none, dur_zero)
    ctx_some, _ = talker.text_context(ids, torch.randn(1, 5, 32))
    assert not torch.allclose(ctx_none, ctx_some)


def _pieces(text: str, hidden):
    async def pieces():
        for i, c in enumerate(text):
            yield c, None if hidden is None else hidden[i]

    return pieces()


def test_speaker_hears_the_thinkers_hidden_states():
    text = "hello there, seven"
    speaker = Speaker(tiny_talker(), block_frames=4, use_hidden=True)
    with torch.no_grad():
        speaker.talker.hidden_in.weight.mul_(50)  # so the track cannot be lost in a random model's noise
    plain = torch.cat(collect(speaker.speak(_pieces(text, None))), -1)
    assert torch.equal(plain, torch.cat(collect(speaker.say(text)), -1))
    torch.manual_seed(1)
    hidden = torch.randn(len(text), 32)
    heard = torch.cat(collect(speaker.speak(_pieces(text, hidden))), -1)
    assert heard.shape == plain.shape  # same phonemes, same durations (the tiny Talker's are fixed)
    assert not torch.equal(heard, plain)
    # Only each word's last character counts: changing any other character's state changes nothing.
    other = hidden.clone()
    other[[0, 1, 6, 13]] = torch.randn(4, 32)  # inside "hello", "there", "seven"
    assert torch.equal(torch.cat(collect(speaker.speak(_pieces(text, other))), -1), heard)
    # Off (the default): the states are not read, and it speaks as from the text alone.
    speaker.use_hidden = False
    assert torch.equal(torch.cat(collect(speaker.speak(_pieces(text, hidden))), -1), plain)


def test_hidden_states_of_another_size_are_refused_clearly():
    speaker = Speaker(tiny_talker(), block_frames=4, use_hidden=True)
    with pytest.raises(ValueError, match="hidden states have 8 values; this Talker reads 32"):
        collect(speaker.speak(_pieces("hi there", torch.randn(8, 8))))


def test_builtin_chat_passes_hidden_states_to_the_talker():
    thinker, talker = tiny_thinker(), tiny_talker()
    seen = []
    original = talker.text_context

    def spy(ids, hidden):
        seen.append(hidden)
        return original(ids, hidden)

    talker.text_context = spy
    responder = ChatResponder(BuiltinThinker(thinker, torch.randn(8, 1024, 16)),
                              Speaker(talker, block_frames=4, use_hidden=True))
    torch.manual_seed(1)  # the random Thinker's reply is drawn from the global generator: this seed writes words
    asyncio.run(_drain(responder.respond(torch.randint(0, 1024, (1, 8, 40)))))
    assert seen and all(h is not None and h.shape[-1] == 32 for h in seen)
    assert any(bool(h.abs().sum() > 0) for h in seen), "no word of the reply carried its hidden state"


async def _drain(it):
    return [x async for x in it]
