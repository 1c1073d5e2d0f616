"""`talkstream bench voices`: candidate voices for the Talker, side by side on held-out sentences, as a listener
judges them: faster-whisper tiny.en's WER against the text and DNSMOS P.835 OVRL of each voice's own audio.

This is the measurement the Talker's voice was chosen by (docs/models.md); one run, the same sentences for every
voice, so the figures compare.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from talkstream.bench import listener
from talkstream.errors import UserError

DEFAULT_VOICES = ("piper:joe", "kokoro:jm_kumo", "kokoro:jf_alpha", "espeak:en-us")


def parse_voice(text: str):
    from talkstream.data.voices import Voice

    engine, sep, name = text.partition(":")
    if not sep or engine not in ("piper", "kokoro", "espeak", "festival") or not name:
        raise UserError(f"a voice is ENGINE:NAME with ENGINE piper, kokoro, espeak or festival, not {text!r}")
    return Voice(engine, name)


def run_voice_bench(voices: list[str] | tuple[str, ...] = DEFAULT_VOICES, sentences: int = 20, seed: int = 777
                    ) -> dict:
    from talkstream.data.sentences import sentences as make_sentences
    from talkstream.data.voices import synthesize

    parsed = [parse_voice(v) for v in voices]  # every name checked before any synthesis
    listener.recogniser()  # a clear error now when the asr extra is missing
    texts = make_sentences(sentences, seed=seed)
    rows = []
    for voice in parsed:
        t0, heard, mos, audio_s = time.perf_counter(), [], [], 0.0
        for text in tqdm(texts, desc=voice.id, unit="sentence", leave=False):
            audio = synthesize(voice, text)
            audio_s += audio.size / 24_000
            heard.append(listener.transcribe(audio, 24_000))
            mos.append(listener.dnsmos(audio, 24_000)["ovrl"])
        rows.append({"voice": voice.id, "wer": round(listener.wer(texts, heard), 4),
                     "dnsmos_ovrl": round(float(np.mean(mos)), 3), "audio_seconds": round(audio_s, 1),
                     "seconds": round(time.perf_counter() - t0, 1)})
    print(f"{'voice':24} {'WER':>6} {'OVRL':>5}  (faster-whisper tiny.en, DNSMOS; {len(texts)} held-out sentences)")
    for r in rows:
        print(f"{r['voice']:24} {r['wer']:6.1%} {r['dnsmos_ovrl']:5.2f}")
    return {"sentences": len(texts), "seed": seed, "rows": rows}
