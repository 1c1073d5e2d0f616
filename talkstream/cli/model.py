"""CLI commands of the Thinker-Talker: chat, say, data model, train thinker|talker, bench model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from talkstream.bench.results import write_result
from talkstream.cli.files import out_file
from talkstream.errors import UserError

MAX_TURN_S = 30.0  # the longest turn `chat` answers: the Thinker learned turns of a few seconds; memory stays bounded


def thinker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the Thinker (what writes the reply)")
    g.add_argument("--thinker", choices=["builtin", "transcribe", "openai", "legacy"], default="builtin",
                   help="builtin: Whisper tiny.en's ears and tool calls (arithmetic, spelling, days, months, counting, "
                   "the clock); transcribe: the transcript only; openai: the ears, and an OpenAI-compatible endpoint "
                   "writes the reply; legacy: the v1 learned Thinker")
    g.add_argument("--thinker-url", default=None,
                   help="an OpenAI-compatible /v1 endpoint, e.g. http://127.0.0.1:11434/v1 (Ollama's port)")
    g.add_argument("--thinker-model", default="default", help="model name sent to the endpoint")
    g.add_argument("--thinker-key-env", default="OPENAI_API_KEY", help="environment variable holding an API key")
    g.add_argument("--speed", type=float, default=1.0,
                   help="speaking rate of the Talker (1.5: half as fast again); its speech is deterministic")
    g.add_argument("--backend", choices=["torch", "onnx"], default="onnx",
                   help="the Talker's frame step in onnxruntime (default) or torch eager")
    talker_hidden_arg(g)


def talker_hidden_arg(g) -> None:
    g.add_argument("--talker-hidden", action="store_true",
                   help="the Talker also reads the Thinker's hidden states (the dual track), for a Talker trained "
                   "with them; the shipped one is trained on text alone, so this is off by default")


def serve_thinker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chat mode's answerer")
    g.add_argument("--thinker", choices=["builtin", "transcribe", "openai", "legacy", "echo"], default="builtin",
                   help="builtin: Whisper tiny.en's ears and tool calls, the Talker speaks; transcribe: a transcript "
                   "event per turn, no reply; openai: the ears, and an OpenAI-compatible endpoint writes the reply; "
                   "legacy: the v1 learned Thinker; echo: say the user's turn back (no model)")
    g.add_argument("--thinker-url", default=None,
                   help="an OpenAI-compatible /v1 endpoint, e.g. http://127.0.0.1:11434/v1 (Ollama's port)")
    g.add_argument("--thinker-model", default="default", help="model name sent to the endpoint")
    g.add_argument("--thinker-key-env", default="OPENAI_API_KEY", help="environment variable holding an API key")
    talker_hidden_arg(g)


def _check_thinker(args) -> None:
    from urllib.parse import urlsplit

    if args.thinker == "openai" and not args.thinker_url:
        raise UserError("--thinker openai needs --thinker-url (an OpenAI-compatible /v1 endpoint)")
    if args.thinker == "openai" and urlsplit(args.thinker_url).scheme not in ("http", "https"):
        raise UserError(f"--thinker-url must be an http(s) URL of an OpenAI-compatible /v1 endpoint, "
                        f"got {args.thinker_url!r}")


def serve_thinker_config(args) -> dict:
    import os

    _check_thinker(args)
    return {"thinker": args.thinker, "thinker_url": args.thinker_url, "thinker_model": args.thinker_model,
            "thinker_api_key": os.environ.get(args.thinker_key_env), "talker_hidden": args.talker_hidden}


def _responder(args, codec):
    import os

    from talkstream.chat.responder import load_chat
    from talkstream.models.talker import SamplingConfig

    return load_chat(codec, args.thinker, args.thinker_url, args.thinker_model,
                     os.environ.get(args.thinker_key_env), sampling=SamplingConfig(speed=args.speed),
                     backend=args.backend, talker_hidden=args.talker_hidden)


def cmd_chat(args) -> None:
    import soundfile as sf

    from talkstream.audio_io import load_audio
    from talkstream.chat.responder import answer_pcm
    from talkstream.checkpoint import load_audio_codec

    _check_thinker(args)
    out_file(args.out)
    codec = load_audio_codec()
    pcm = load_audio(args.input, codec.sample_rate)
    if len(pcm) > MAX_TURN_S * codec.sample_rate:
        print(f"talkstream: {args.input} is {len(pcm) / codec.sample_rate:.1f} s; a turn is at most "
              f"{MAX_TURN_S:.0f} s, so chat answers its first {MAX_TURN_S:.0f} s", file=sys.stderr)
        pcm = pcm[: int(MAX_TURN_S * codec.sample_rate)]
    video = None
    if args.video:
        from talkstream.checkpoint import load_video_codec
        from talkstream.models.av import video_tokens_for_turn

        video = video_tokens_for_turn(args.video, load_video_codec(), len(pcm) / codec.sample_rate)
    r = answer_pcm(_responder(args, codec), codec, pcm, video)
    sf.write(args.out, r.pcm, codec.sample_rate, subtype="PCM_16")
    print(f"heard:  {r.transcript}")
    print(f"reply:  {r.reply}")
    print(f"audio:  {args.out} ({len(r.pcm) / codec.sample_rate:.2f} s)")
    print(f"first packet after {r.first_packet_ms:.0f} ms; whole answer in {r.seconds:.2f} s")


def cmd_say(args) -> None:
    import asyncio

    import soundfile as sf
    import torch

    from talkstream.chat.responder import answer_codes
    from talkstream.checkpoint import load_audio_codec
    from talkstream.models import text as tx
    from talkstream.models.turn import Turn

    if not any(c.isalpha() for c in tx.normalize(args.text)):
        raise UserError("nothing to say: the text has no letters or digits")
    _check_thinker(args)
    out_file(args.out)
    codec = load_audio_codec()
    responder = _responder(args, codec)

    class _Say:  # the responder's speaker alone, as a responder (decoded by the Talker's own voice decoder)
        reply_format = responder.reply_format

        @staticmethod
        def respond(_turn, video=None):
            return responder.speaker.say(args.text)

    nothing = Turn(torch.zeros(1, responder.reply_format.num_codebooks or 1, 0, dtype=torch.long), None)
    r = asyncio.run(answer_codes(_Say(), codec, nothing))
    sf.write(args.out, r.pcm, codec.sample_rate, subtype="PCM_16")
    print(f"said:   {tx.normalize(args.text)}")
    print(f"audio:  {args.out} ({len(r.pcm) / codec.sample_rate:.2f} s, {r.talker_frames} frames)")
    print(f"first packet after {r.first_packet_ms:.0f} ms; whole in {r.seconds:.2f} s "
          f"(real-time factor {r.seconds / max(len(r.pcm) / codec.sample_rate, 1e-9):.2f})")


def cmd_data_model(args) -> None:
    from talkstream.checkpoint import load_codec_v1
    from talkstream.models.data import build_model_data

    # the v1 learned Thinker hears codec v1's tokens (V1Thinker re-encodes turns with it when serving)
    out = build_model_data(Path(args.out), load_codec_v1(), Path(args.corpus) if args.corpus else None,
                           questions=args.questions, seed=args.seed)
    print(f"model data written to {out}")


def cmd_data_talker(args) -> None:
    import torch

    from talkstream.checkpoint import load_voice_codec
    from talkstream.models.talker_data import build_talker_data

    torch.set_num_threads(args.threads)
    # The latent is the one the Talker will speak in: by default the shipped voice codec's (its encoder and codebooks)
    out = build_talker_data(Path(args.out), load_voice_codec(args.codec).eval(), n_sentences=args.sentences,
                            n_questions=args.questions, n_eval=args.eval, speaker=args.voice, threads=args.threads)
    print(f"Talker data written to {out}")


def cmd_data_video_questions(args) -> None:
    import torch

    from talkstream.checkpoint import load_codec_v1, load_video_codec
    from talkstream.models.video_questions import build_video_questions

    torch.set_num_threads(1)
    out = build_video_questions(Path(args.out), load_codec_v1(), load_video_codec(), train=args.train,
                                evaluate=args.eval, seed=args.seed)
    print(f"video questions written to {out}")


def cmd_train_model(args) -> None:
    from talkstream.models.train import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                      dim=args.dim, layers=args.layers, seed=args.seed,
                      video_share=getattr(args, "video_share", 0.0), init=args.init, warmup=args.warmup)
    run = Path(args.run or f"runs/{args.what}")
    out = train(args.what, Path(args.data), run, cfg, command=["talkstream", *sys.argv[1:]])
    print(f"weights exported to {out} (copy to talkstream/weights/{args.what} to ship them)")


def cmd_train_talker(args) -> None:
    from talkstream.checkpoint import load_voice_codec
    from talkstream.models.train import TrainConfig
    from talkstream.models.train_talker import train_talker

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads, dim=args.dim,
                      layers=args.layers, seed=args.seed, warmup=args.warmup, crop=args.crop,
                      eval_every=args.eval_every, init=args.init)
    out = train_talker(Path(args.data), Path(args.run), cfg, load_voice_codec(args.codec).eval(),
                       command=["talkstream", *sys.argv[1:]])
    print(f"weights exported to {out} (copy to talkstream/weights/talker to ship them)")


def cmd_train_voice(args) -> None:
    from talkstream.checkpoint import load_voice_codec
    from talkstream.codecs.audio.codec import with_decoder
    from talkstream.codecs.audio.voice import finetune_decoder
    from talkstream.models.talker_data import load_talker_data

    items = load_talker_data(Path(args.data), "train")
    if args.talker:
        from talkstream.models.train_talker import attach_talker_latents

        attach_talker_latents(items, Path(args.talker), Path(args.run) / "talker_latents.pt", args.threads)
    codec = with_decoder(load_voice_codec(args.init), args.subframes, args.phase)
    out = finetune_decoder(codec, Path(args.run), items, num_codebooks=args.codebooks,
                           steps=args.steps, batch_size=args.batch_size, threads=args.threads,
                           talker_share=args.talker_share, weight_whisper=args.weight_whisper,
                           adversarial=args.adversarial, weight_phase=args.weight_phase,
                           discriminator=args.discriminator, lr=args.lr, disc_warmup=args.disc_warmup)
    print(f"weights exported to {out} (copy to talkstream/weights/voice_codec to ship them)")


def cmd_data_ears(args) -> None:
    from talkstream.models.train_ears import build_ears_data

    if not 0 <= args.shard < args.shards:
        raise UserError(f"--shard must be in 0..{args.shards - 1}")
    out = build_ears_data(Path(args.out), questions=args.questions, validation=args.validation,
                          corpus=Path(args.corpus) if args.corpus else None, shard=args.shard, shards=args.shards,
                          seed=args.seed, threads=args.threads, vocabulary=args.vocabulary,
                          phone_share=args.phone_share)
    print(f"ears data (shard {args.shard + 1} of {args.shards}) written to {out}")


def cmd_train_ears(args) -> None:
    from talkstream.models.train import TrainConfig
    from talkstream.models.train_ears import train_ears

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                      seed=args.seed, warmup=args.warmup, eval_every=args.eval_every)
    out = train_ears(Path(args.data), Path(args.run), cfg, rank=args.rank, command=["talkstream", *sys.argv[1:]],
                     init=Path(args.init) if args.init else None)
    print(f"adapter exported to {out} (copy to talkstream/weights/ears_adapter to ship it)")


def cmd_bench_model(args) -> None:
    from talkstream.bench.model import run_model_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_model_bench(Path(args.data), questions=args.questions, sentences=args.sentences,
                              threads=args.threads, backend=args.backend, talker_sentences=args.talker_sentences)
    write_result(out, results, args.argv)


def cmd_bench_voices(args) -> None:
    from talkstream.bench.voices import run_voice_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_voice_bench(args.voices, sentences=args.sentences)
    write_result(out, results, args.argv)


def cmd_export_model(args) -> None:
    from talkstream.checkpoint import load_talker, load_thinker
    from talkstream.models.onnx_steps import export_model_steps
    from talkstream.whisper.encoder import load_whisper_encoder

    manifest = export_model_steps(load_thinker(), load_talker(), Path(args.out), int8=args.int8,
                                  whisper_encoder=load_whisper_encoder())
    for g in manifest["graphs"]:
        print(f"{g['file']:28} {g['bytes'] / 1e6:6.2f} MB  sha256 {g['sha256'][:16]}")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")


def add_model_commands(sub, train_sub, data_sub, bench_sub, export_sub) -> None:
    ep = export_sub.add_parser("model", help="the Thinker's and Talker's transformer steps, KV cache explicit",
                               description="Write thinker_step.onnx and talker_step.onnx (one position per call, "
                               "every layer's past keys and values as inputs with a dynamic length, the new ones as "
                               "outputs) and thinker_block.onnx (listening: a block of new positions per call), "
                               "checked with onnx.checker, with manifest.json.")
    ep.add_argument("--out", required=True, help="folder for the graphs and manifest.json")
    ep.add_argument("--int8", action="store_true", help="also write dynamically quantized int8 copies")
    ep.set_defaults(func=cmd_export_model)

    sp = sub.add_parser("chat", help="answer one spoken turn from a file (speech in, text and speech out)",
                        description="Hear IN (any audio file), print the transcript and the reply, write the spoken "
                        "reply to --out, and report the first-packet latency. A turn is at most "
                        f"{MAX_TURN_S:.0f} s: a longer file is cut there, with a note.")
    sp.add_argument("input", metavar="IN", help="the user's speech: WAV, FLAC, OGG, MP3, ...")
    sp.add_argument("--out", default="reply.wav", help="where the spoken reply goes (24 kHz WAV)")
    sp.add_argument("--video", default=None, metavar="CLIP",
                    help="a video seen while the question is asked (mp4, webm, ...): the Thinker watches it too, "
                    "e.g. 'what colour is the ball?' over a clip of a ball")
    thinker_args(sp)
    sp.set_defaults(func=cmd_chat)

    sp = sub.add_parser("say", help="speak text with the Talker", description="Speak TEXT in the Talker's voice.")
    sp.add_argument("text", metavar="TEXT")
    sp.add_argument("--out", default="say.wav", help="24 kHz WAV")
    thinker_args(sp)
    sp.set_defaults(func=cmd_say)

    for what in ("thinker",):
        tp = train_sub.add_parser(what, help=f"train the {what} (resumes from RUN/last.pt)",
                                  description=f"Train the {what} on `talkstream data model` output. Rerun to resume.")
        tp.add_argument("--data", default="data/model")
        tp.add_argument("--run", default=None, help=f"run folder (default runs/{what})")
        tp.add_argument("--steps", type=int, default=6000, help="total optimiser steps (lr schedule length)")
        tp.add_argument("--batch-size", type=int, default=16 if what == "thinker" else 12)
        tp.add_argument("--lr", type=float, default=1e-3)
        tp.add_argument("--dim", type=int, default=192)
        tp.add_argument("--layers", type=int, default=4 if what == "thinker" else 3)
        tp.add_argument("--threads", type=int, default=1)
        tp.add_argument("--seed", type=int, default=0)
        tp.add_argument("--warmup", type=int, default=300, help="steps of learning-rate warm-up")
        tp.add_argument("--init", default=None, help="start a new run from these weights (e.g. talkstream/weights/"
                        f"{what}); parts they lack start fresh. Ignored when the run folder has last.pt")
        if what == "thinker":
            tp.add_argument("--video-share", type=float, default=0.3,
                            help="share of batches that are video questions, when DATA/video_train.pt exists "
                            "(`talkstream data video-questions`); 0: audio only")
        tp.set_defaults(func=cmd_train_model, what=what)

    tp = train_sub.add_parser("talker", help="train the Talker (resumes from RUN/last.pt)",
                              description="Train the Talker on `talkstream data talker` output (its voice's speech "
                              "with its durations): it regresses the codec's latent per frame. Rerun to resume.")
    tp.add_argument("--data", default="data/talker")
    tp.add_argument("--run", default="runs/talker")
    tp.add_argument("--steps", type=int, default=4000, help="total optimiser steps (lr schedule length)")
    tp.add_argument("--batch-size", type=int, default=16)
    tp.add_argument("--crop", type=int, default=256, help="frames per training window (the streaming window)")
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--dim", type=int, default=256)
    tp.add_argument("--layers", type=int, default=4)
    tp.add_argument("--threads", type=int, default=1)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--warmup", type=int, default=300, help="steps of learning-rate warm-up")
    tp.add_argument("--eval-every", type=int, default=250)
    tp.add_argument("--init", default=None, help="start a new run from a trained Talker (e.g. talkstream/weights/"
                    "talker, another voice's): its weights, and each unit's embedding by name. Ignored when the run "
                    "folder has last.pt")
    tp.add_argument("--codec", default=None, help="the codec checkpoint folder whose latent and codebooks the Talker "
                    "speaks in (the one `data talker --codec` used); default: the shipped talkstream/weights/"
                    "voice_codec")
    tp.set_defaults(func=cmd_train_talker)


    vp = train_sub.add_parser("voice", help="fine-tune the codec's decoder on the Talker's voice (resumes)",
                              description="Fine-tune a copy of the shipped codec's decoder on the Talker's voice "
                              "(`talkstream data talker`) at the Talker's codebooks (encoder and quantizer frozen, so "
                              "tokens keep their meaning), steered by Whisper's hearing. With --talker, part of the "
                              "segments decode that Talker's own tokens for the same audio.")
    vp.add_argument("--data", default="data/talker")
    vp.add_argument("--run", default="runs/voice")
    vp.add_argument("--talker", default=None, help="a Talker checkpoint folder whose tokens the decoder also learns")
    vp.add_argument("--talker-share", type=float, default=0.5, help="share of segments from the Talker's tokens")
    vp.add_argument("--codebooks", type=int, default=8)
    vp.add_argument("--weight-whisper", type=float, default=1.0, help="weight of the Whisper hearing losses")
    vp.add_argument("--adversarial", type=float, default=0.0,
                    help="weight of a multi-resolution spectrogram discriminator's losses (0: none)")
    vp.add_argument("--discriminator", choices=["spectrogram", "waveform"], default="spectrogram",
                    help="with --adversarial: spectrograms only, or HiFi-GAN's period discriminators beside them "
                    "(the waveform's phase)")
    vp.add_argument("--disc-warmup", type=int, default=0,
                    help="with --adversarial: steps that train the discriminator alone first, the decoder unchanged "
                    "(measured: it did not spare the decoder its DNSMOS dip, docs/models.md)")
    vp.add_argument("--weight-phase", type=float, default=0.0,
                    help="weight of the group-delay and instantaneous-frequency losses (0: none)")
    vp.add_argument("--subframes", type=int, default=None,
                    help="STFT windows the decoder emits per frame: 2 overlaps them by three quarters instead of half "
                    "(same latency); from a one-window --init the new head is warm-started from its head (default: "
                    "as --init has it; measured no better, docs/models.md)")
    vp.add_argument("--phase", choices=["absolute", "advance"], default=None,
                    help="the decoder predicts each window's phase (absolute), or each bin's advance since the "
                    "previous window and carries the phase (advance; from an absolute --init its head starts at the "
                    "bins' centre frequencies; default: as --init has it; measured worse, docs/models.md)")
    vp.add_argument("--init", default=None,
                    help="a codec checkpoint folder to start from, with the encoder and codebooks the Talker speaks "
                    "in (the tokens' meaning stays); default: the shipped talkstream/weights/voice_codec "
                    "(docs/models.md: how it was made from codec v3)")
    vp.add_argument("--lr", type=float, default=2e-4)
    vp.add_argument("--steps", type=int, default=1500)
    vp.add_argument("--batch-size", type=int, default=8)
    vp.add_argument("--threads", type=int, default=1)
    vp.set_defaults(func=cmd_train_voice)

    tp = train_sub.add_parser("ears", help="adapt Whisper's decoder to the ears' block-causal states (resumes)",
                              description="Train a low-rank adapter of Whisper tiny.en's decoder on `talkstream data "
                              "ears` output (the ears' cached encoder states and the words said); the checkpoint "
                              "answering most validation questions right is exported to RUN/best. Rerun to resume.")
    tp.add_argument("--data", default="data/ears")
    tp.add_argument("--run", default="runs/ears")
    tp.add_argument("--steps", type=int, default=1500, help="total optimiser steps (lr schedule length)")
    tp.add_argument("--batch-size", type=int, default=16)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--rank", type=int, default=16, help="the adapter's rank (parameters grow with it)")
    tp.add_argument("--init", default=None, help="an adapter folder to start from (talkstream/weights/ears_adapter: "
                    "the shipped one); its rank is kept")
    tp.add_argument("--warmup", type=int, default=100, help="steps of learning-rate warm-up")
    tp.add_argument("--eval-every", type=int, default=250)
    tp.add_argument("--threads", type=int, default=1)
    tp.add_argument("--seed", type=int, default=0)
    tp.set_defaults(func=cmd_train_ears)

    dp = data_sub.add_parser("ears", help="spoken turns with the ears' encoder states, to adapt Whisper's decoder",
                             description="Dialogue questions in the Thinker's training voices and the codec corpus's "
                             "sentences, heard block by block by the ears (as served); validation questions in voices "
                             "held back from training. Run several shards side by side (one per core). Resumes by "
                             "skipping shards already written.")
    dp.add_argument("--out", default="data/ears")
    dp.add_argument("--questions", type=int, default=2000, help="spoken training questions")
    dp.add_argument("--validation", type=int, default=160, help="spoken validation questions")
    dp.add_argument("--vocabulary", type=int, default=1000, help="turns that carry the tools' vocabularies (months, "
                    "days, numbers) in other words, and spelling questions with the corpus's words")
    dp.add_argument("--corpus", default="data/speech", help="the codec's speech corpus to add ('' for none)")
    dp.add_argument("--phone-share", type=float, default=0.0, help="share of training turns heard over an 8 kHz "
                    "G.711 phone line (and every other validation question when above 0)")
    dp.add_argument("--shard", type=int, default=0)
    dp.add_argument("--shards", type=int, default=1)
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--threads", type=int, default=1)
    dp.set_defaults(func=cmd_data_ears)

    dp = data_sub.add_parser("model", help="the Thinker-Talker's data: spoken questions, sentences, the Talker voice")
    dp.add_argument("--out", default="data/model")
    dp.add_argument("--corpus", default="data/speech", help="the codec's speech corpus to add ('' for none)")
    dp.add_argument("--questions", type=int, default=1600, help="spoken training questions")
    dp.add_argument("--seed", type=int, default=0)
    dp.set_defaults(func=cmd_data_model)
    dp = data_sub.add_parser("talker", help="the Talker's voice (Kokoro jm_kumo) with its durations (resumes)",
                             description="The Talker's voice (Kokoro-82M's jm_kumo, or --voice) speaks the "
                             "dialogue's answers and questions and sentences; each example keeps its IPA units, "
                             "their durations from the voice's own duration predictor, the codec's latent and the "
                             "audio. Eval sentences are held out.")
    dp.add_argument("--out", default="data/talker")
    dp.add_argument("--sentences", type=int, default=2000, help="training sentences (besides answers and questions)")
    dp.add_argument("--questions", type=int, default=600, help="dialogue questions to speak")
    dp.add_argument("--eval", type=int, default=100, help="held-out evaluation sentences")
    dp.add_argument("--voice", default="kokoro:jm_kumo", metavar="ENGINE:NAME",
                    help="whose speech: kokoro:NAME (default jm_kumo, the shipped Talker's; jf_alpha, ...) or "
                    "piper:en_US-joe (the previous Talker's; about 3x faster to make)")
    dp.add_argument("--threads", type=int, default=1)
    dp.add_argument("--codec", default=None, help="the codec checkpoint folder whose encoder gives the latent the "
                    "Talker will regress; default: the shipped talkstream/weights/voice_codec")
    dp.set_defaults(func=cmd_data_talker)
    dp = data_sub.add_parser("video-questions", help="the Thinker's video skill: spoken questions about short clips",
                             description="Clips of a moving ball (8 colours, 4 directions) coded by the video "
                             "codec, with spoken questions about its colour or direction coded by the audio codec. "
                             "Writes video_train.pt and video_eval.pt (held-out voices, phrasings and clips).")
    dp.add_argument("--out", default="data/model")
    dp.add_argument("--train", type=int, default=1200, help="training clips")
    dp.add_argument("--eval", type=int, default=160, help="evaluation clips")
    dp.add_argument("--seed", type=int, default=0)
    dp.set_defaults(func=cmd_data_video_questions)

    bp = bench_sub.add_parser("voices", help="the Talker's candidate voices: recogniser WER and DNSMOS side by side",
                              description="Each voice speaks the same held-out sentences; faster-whisper tiny.en's "
                              "WER and DNSMOS OVRL of its own audio. Needs the asr and data extras.")
    bp.add_argument("--voices", nargs="+", default=["piper:joe", "kokoro:jm_kumo", "kokoro:jf_alpha", "espeak:en-us"],
                    metavar="ENGINE:NAME", help="voices to compare (piper, kokoro, espeak or festival)")
    bp.add_argument("--sentences", type=int, default=20)
    bp.add_argument("--out", default=None, help="write the results as JSON here")
    bp.set_defaults(func=cmd_bench_voices)

    from talkstream.bench.ears import add_parser as add_bench_ears

    add_bench_ears(bench_sub)

    bp = bench_sub.add_parser("model", help="Thinker WER and answer accuracy, Talker WER (faster-whisper), latency",
                              description="On held-out voices and sentences: the Thinker's speech-to-text WER beside "
                              "faster-whisper's on the same audio, dialogue answers per skill, the Talker's "
                              "intelligibility and DNSMOS beside the original TTS audio, first-packet latency, "
                              "speed, memory. Needs the asr extra.")
    bp.add_argument("--data", default="data/model",
                    help="`talkstream data model` output, for the video questions (skipped when absent); the speech "
                    "is synthesised here in the held-out voices")
    bp.add_argument("--questions", type=int, default=100, help="held-out spoken dialogue questions")
    bp.add_argument("--sentences", type=int, default=30, help="held-out spoken sentences for the Thinker's WER")
    bp.add_argument("--talker-sentences", type=int, default=40,
                    help="held-out sentences the Talker speaks (40: on 20, the WER moved 2-3 points run to run)")
    bp.add_argument("--threads", type=int, default=1)
    bp.add_argument("--backend", choices=["torch", "onnx"], default="onnx", help="the models' decoding steps")
    bp.add_argument("--out", default=None, help="write results JSON here")
    bp.set_defaults(func=cmd_bench_model)
