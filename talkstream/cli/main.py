"""The `talkstream` command: one CLI, a subcommand per job. Errors a user can cause (`UserError`) print one line
and exit 2 (with -v, their traceback too); any other exception is a bug and prints its traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from talkstream.bench.results import write_result
from talkstream.cli.files import out_file
from talkstream.cli.model import add_model_commands, serve_thinker_args, serve_thinker_config
from talkstream.cli.turns import add_turn_commands
from talkstream.cli.video import add_video_commands
from talkstream.data import SAMPLE_WAV
from talkstream.errors import UserError


def _codec(args):
    """The codec, on the backend the command asked for (`--backend onnx`: the same interface, steps in onnxruntime)."""
    from talkstream.checkpoint import load_audio_codec

    codec = load_audio_codec(args.weights)
    if getattr(args, "backend", "torch") == "onnx":
        from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps

        return OnnxAudioCodec(codec, OnnxCodecSteps(codec, **_onnx_options(args)))
    return codec


def _codebooks(codec, counts: int | list[int]) -> None:
    """Refuse codebook counts the codec does not have, before any work."""
    for n in counts if isinstance(counts, list) else [counts]:
        if not 1 <= n <= codec.num_codebooks:
            raise UserError(f"--codebooks must be between 1 and {codec.num_codebooks} (got {n})")


def _onnx_options(args) -> dict:
    return {"export_dir": args.onnx_dir, "precision": args.precision, "providers": args.providers}


def cmd_export_codec(args) -> None:
    from talkstream.checkpoint import WEIGHTS_DIR, load_audio_codec
    from talkstream.codecs.audio.onnx_step import export_codec

    weights = Path(args.weights or WEIGHTS_DIR / "audio_codec")
    codec = load_audio_codec(weights)  # verifies the checksum recorded below
    sha = json.loads((weights / "config.json").read_text())["sha256"]
    m = export_codec(codec, args.out, args.codebooks, args.frames_per_step, tuple(args.ops), args.int8, sha)
    for g in m["graphs"]:
        print(f"{g['file']:<32} {g['bytes'] / 1e6:6.1f} MB  sha256 {g['sha256'][:12]}")
    print(f"{len(m['graphs'])} graphs (opset {m['opset']}, checked) and manifest.json in {args.out}")


def cmd_demo(args) -> None:
    try:
        from talkstream.demo import build_demo

        demo = build_demo(_codec(args))
    except ImportError as e:
        raise UserError(f"the demo needs gradio: pip install 'talkstream[demo]' ({e})") from None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


def cmd_bench_backends(args) -> None:
    from talkstream.bench.backends import run_backends_bench
    from talkstream.bench.codec import eval_files

    data = Path(args.data)
    files = eval_files(data, args.files) if (data / "manifest.jsonl").exists() else [Path(SAMPLE_WAV)]
    out = out_file(args.out)  # its folder now, not after the run
    results = run_backends_bench(
        _codec(argparse.Namespace(weights=args.weights)),
        files,
        steps=args.steps,
        frames_per_step=tuple(args.frames_per_step),
        providers=args.providers,
    )
    write_result(out, results, args.argv)


def cmd_encode(args) -> None:
    from talkstream.codecs.audio.files import encode_file

    out_file(args.output)
    codec = _codec(args)
    _codebooks(codec, args.codebooks)
    h = encode_file(codec, args.input, args.output, args.codebooks)
    secs = h["num_samples"] / h["sample_rate"]
    size = Path(args.output).stat().st_size
    print(
        f"{args.output}: {h['num_frames']} frames x {h['num_codebooks']} codebooks, {secs:.2f} s, "
        f"{size} bytes ({size * 8 / max(secs, 1e-9) / 1000:.2f} kbps with header)"
    )


def cmd_decode(args) -> None:
    from talkstream.codecs.audio.files import decode_file

    out_file(args.output)
    h = decode_file(_codec(args), args.input, args.output)
    print(f"{args.output}: {h['duration_s']} s at {h['sample_rate']} Hz from {h['num_codebooks']} codebooks")


def cmd_roundtrip(args) -> None:
    """Encode and decode a file (the bundled sample by default) at each codebook count; report quality."""
    import tempfile

    from talkstream.audio_io import load_audio
    from talkstream.bench.metrics import require_metrics
    from talkstream.bench.roundtrip import roundtrip

    require_metrics()  # before the work, not after it
    codec = _codec(args)
    _codebooks(codec, args.codebooks)
    src = Path(args.input or SAMPLE_WAV)
    ref = load_audio(src, codec.sample_rate)
    print(
        f"{src.name}: {ref.size / codec.sample_rate:.2f} s; codec {codec.cfg.codec_id}, "
        f"{codec.frame_rate:.0f} frames/s, algorithmic latency {codec.algorithmic_latency_ms:.1f} ms"
    )
    with tempfile.TemporaryDirectory(prefix="talkstream-roundtrip-") as tmp:
        out = Path(args.out_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{'codebooks':>9} {'kbps':>6} {'PESQ-WB':>8} {'STOI':>6}  output")
        for r in roundtrip(codec, ref, out / src.stem, args.codebooks, progress=True):
            where = r.wav if args.out_dir else "(not kept: --out DIR keeps the files)"
            print(f"{r.codebooks:>9} {r.kbps:>6.2f} {r.pesq_wb:>8.2f} {r.stoi:>6.3f}  {where}")


def cmd_train_codec(args) -> None:
    from talkstream.codecs.audio.train import TrainConfig, train_codec

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_minutes=args.checkpoint_minutes,
        max_minutes=args.max_minutes,
        threads=args.threads,
        device=args.device,
        seed=args.seed,
        init=args.init,
        decoder_subframes=args.subframes,
        pitch_bits=args.pitch_bits,
        excited_blocks=args.excited_blocks,
        weight_complex=args.weight_complex,
        codec_id=args.codec_id,
        segment_seconds=args.segment_seconds,
        weight_whisper=args.weight_whisper,
        weight_whisper_mel=args.weight_whisper_mel,
        weight_semantic=args.weight_semantic,
        bandlimit_prob=args.bandlimit_prob,
        decoder_only=args.decoder_only,
        encoder=args.encoder,
        mel_bands=args.mel_bands,
        init_decoder=args.init_decoder,
    )
    export = train_codec(cfg)
    print(f"weights exported to {export} (copy to talkstream/weights/audio_codec to ship them)")


def cmd_data_speech(args) -> None:
    from talkstream.data.corpus import make_speech_corpus

    out = make_speech_corpus(Path(args.out), minutes=args.minutes, eval_per_voice=args.eval_per_voice, seed=args.seed)
    print(f"corpus written to {out}")


def cmd_bench_codec(args) -> None:
    from talkstream.bench.codec import run_codec_bench
    from talkstream.checkpoint import load_audio_codec

    out = out_file(args.out)  # its folder now, not after the run
    baseline = load_audio_codec(args.baseline) if args.baseline else None
    results = run_codec_bench(_codec(args), Path(args.data), max_files=args.files, weights_dir=args.weights,
                              codebooks=tuple(args.codebooks), opus=tuple(args.opus), baseline=baseline,
                              real=None if args.no_real else Path(args.real))
    write_result(out, results, args.argv)


def cmd_serve(args) -> None:
    import asyncio
    import os

    from talkstream.services.app import ServerConfig, run_server
    from talkstream.services.session import Limits

    token = args.token or os.environ.get("TALKSTREAM_TOKEN") or None
    if args.public_host is not None and (not args.public_host or any(c in args.public_host for c in "/?# ")):
        raise UserError(f"--public-host wants a host name (and :port), e.g. abc.ngrok.app, not {args.public_host!r}")
    limits = Limits(
        max_message_bytes=args.max_message_bytes,
        max_session_s=args.max_session_s,
        idle_timeout_s=args.idle_timeout_s,
        token=token,
        frames_per_step=args.frames_per_step,
    )
    cfg = ServerConfig(
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        max_conversations=_max_conversations(args),
        gather_ms=args.gather_ms,
        codec_threads=args.codec_threads,
        step_interval_ms=args.step_interval_ms,
        step_interval_fixed=args.step_interval_fixed,
        http_port=None if args.no_http else args.http_port,
        ice_servers=_ice_servers(args.ice_server),
        backend=args.backend,
        onnx_options=_onnx_options(args),
        limits=limits,
        allowed_origins=args.allow_origin,
        weights=args.weights,
        video_weights=args.video_weights,
        public_host=args.public_host,
        twilio_auth_token=args.twilio_auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or None,
        turn_end=args.turn_end,
        **serve_thinker_config(args),
    )
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    for flag, value in (("--gather-ms", args.gather_ms), ("--step-interval-ms", args.step_interval_ms)):
        if not value >= 0:  # NaN too
            raise UserError(f"{flag} must be at least 0 (got {value:g})")
    from talkstream.services.workers import default_workers, serve_workers

    if args.ray:
        from talkstream.services.ray_loopback import prepare_driver

        prepare_driver(args.ray)  # a head on this machine's loopback: before ray is imported (ray_loopback.py)
        try:
            from talkstream.services.ray_serve import run_on_ray
        except ImportError as e:
            raise UserError(f"--ray needs Ray Serve: pip install 'talkstream[ray]' ({e})") from None
        # --workers: replicas (default: autoscaled on live sessions)
        run_on_ray(cfg, args.ray, args.workers, args.ray_placement_timeout)
        return
    workers = args.workers or default_workers()
    if workers > 1:
        serve_workers(cfg, workers)  # a supervisor and N worker processes on shared ports (services/workers.py)
        return
    try:
        asyncio.run(run_server(cfg))
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def cmd_client(args) -> None:
    import asyncio
    import os

    import websockets

    from talkstream.audio_io import load_audio, save_audio
    from talkstream.client import ServerError, report, stream_audio

    audio = load_audio(args.input, args.sample_rate)
    out_file(args.out)
    try:
        r = asyncio.run(
            stream_audio(
                args.url,
                audio,
                args.sample_rate,
                mode=args.mode,
                codebooks=args.codebooks,
                output=("pcm",),
                realtime=not args.fast,
                token=args.token or os.environ.get("TALKSTREAM_TOKEN") or None,
                tail_s=args.tail,
            )
        )
    except ServerError as e:
        raise UserError(f"server refused: {e}") from None
    except (OSError, TimeoutError, websockets.WebSocketException) as e:
        raise UserError(f"cannot reach {args.url} or it stopped answering: {e or type(e).__name__}") from None
    save_audio(args.out, r.pcm, args.sample_rate)
    print(f"{args.out}: " + "\n".join(report(r, args.sample_rate, audio.size / args.sample_rate)))
    if r.summary is None:
        raise UserError(f"the stream ended early: the server closed the connection ({r.closed or 'no reason given'}) "
                         f"after {r.sent_s:.2f} of {audio.size / args.sample_rate:.2f} s were sent, before its summary")


def _ice_servers(specs: list[str] | None) -> list:
    if not specs:
        return []
    from talkstream.services.webrtc import parse_ice_server

    return [parse_ice_server(s) for s in specs]


def cmd_bench_webrtc(args) -> None:
    from talkstream.bench.webrtc import run_webrtc_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_webrtc_bench(
        args.sessions, args.seconds, args.weights, args.frames_per_step, args.backend, args.client_jitter_frames,
        args.workers, args.step_interval_ms,
    )
    write_result(out, results, args.argv)


def cmd_bench_serve(args) -> None:
    from talkstream.bench.serve import run_serve_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_serve_bench(
        args.sessions, args.seconds, args.weights, args.frames_per_step, args.gather_ms, args.backend, args.workers,
        args.precision, args.step_interval_ms,
    )
    write_result(out, results, args.argv)


def cmd_bench_chat(args) -> None:
    from talkstream.bench.chat_load import run_chat_load_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_chat_load_bench(args.sessions, args.workers, args.thinker, args.questions, args.server_option)
    write_result(out, results, args.argv)


def cmd_bench_phone(args) -> None:
    from talkstream.bench.phone import run_phone_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_phone_bench(args.questions, args.thinker, websocket=not args.no_websocket)
    n = results["questions"]
    paths = [("phone (8 kHz)", results)] + ([("websocket", results["websocket"])] if "websocket" in results else [])
    print(f"{'path':<14} {'answer heard':>12} {'word for word':>13} {'WER':>5} {'v2v p50':>8} {'v2v p95':>8}")
    for name, r in paths:
        print(f"{name:<14} {r['answer_heard']:>9}/{n:<2} {r['right']:>10}/{n:<2} {r['wer']:>5.2f} "
              f"{r['voice_to_voice_ms_p50']!s:>8} {r['voice_to_voice_ms_p95']!s:>8}")
    if results.get("p95_phone_minus_websocket_ms") is not None:
        print(f"voice-to-voice p95, phone minus websocket: {results['p95_phone_minus_websocket_ms']} ms")
    write_result(out, results, args.argv)


# What one worker (about one core) holds with the Talker speaking every answer: `bench chat` on 2026-12-07, two
# workers, 2 conversations each: voice to voice p50 730 ms; 4 each: p50 1.4 s, p95 3.1 s (docs/benchmarks.md).
CONVERSATIONS_PER_WORKER = 3
TALKER_THINKERS = ("builtin", "openai", "legacy")


def _max_conversations(args) -> int | None:
    """--max-conversations: N, 0 for no limit, or by default CONVERSATIONS_PER_WORKER when the Talker speaks the
    answers (the echo and transcribe answerers cost little: no limit)."""
    n = args.max_conversations
    if n is None:
        return CONVERSATIONS_PER_WORKER if args.thinker in TALKER_THINKERS else None
    if n < 0:
        raise UserError(f"--max-conversations must be 0 (no limit) or more (got {n})")
    return n or None


def cmd_bench_soak(args) -> None:
    from talkstream.bench.soak import run_soak_bench

    out = out_file(args.out)  # its folder now, not after the run
    results = run_soak_bench(args.cycles, args.concurrency, args.thinker)
    write_result(out, results, args.argv)
    if not results["passes"]:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="talkstream",
        description="Real-time speech with a causal neural codec. Each subcommand has its own --help.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def weights_arg(sp):
        sp.add_argument("--weights", default=None, help="codec checkpoint folder (default: the shipped weights)")

    def onnx_args(sp, precision: str = "fp32"):
        sp.add_argument("--onnx-dir", default=None, help="graphs from `talkstream export codec` (default: in memory)")
        sp.add_argument("--precision", choices=["fp32", "int8"], default=precision,
                        help=f"the codec graphs' precision (default {precision}); int8: dynamically quantized, the "
                        "same codes and PESQ within 0.04 of fp32 (`bench backends`)")
        sp.add_argument("--int8", dest="precision", action="store_const", const="int8", help="--precision int8")
        sp.add_argument(
            "--providers",
            default=None,
            help="onnxruntime providers in order, e.g. tensorrt,cuda,cpu (default; unavailable ones are skipped)",
        )

    def backend_args(sp, default="torch"):
        sp.add_argument(
            "--backend", choices=["torch", "onnx"], default=default, help=f"codec steps (default {default})"
        )
        onnx_args(sp)

    sp = sub.add_parser(
        "encode",
        help="audio file -> .tsk token file",
        description="Encode any common audio file (any rate, mono or stereo) into codec tokens.",
    )
    sp.add_argument("input", help="audio file (wav, flac, ogg, mp3, m4a, ...)")
    sp.add_argument("output", help="token file to write (.tsk)")
    sp.add_argument("--codebooks", type=int, default=8, help="codebooks 1..8: 0.75 kbps each at 75 Hz (default 8)")
    weights_arg(sp)
    backend_args(sp)
    sp.set_defaults(func=cmd_encode)

    sp = sub.add_parser("decode", help=".tsk token file -> WAV", description="Decode a .tsk file to 24 kHz WAV.")
    sp.add_argument("input", help="token file (.tsk)")
    sp.add_argument("output", help="WAV file to write")
    weights_arg(sp)
    backend_args(sp)
    sp.set_defaults(func=cmd_decode)

    sp = sub.add_parser(
        "roundtrip",
        help="encode+decode a file (default: the bundled sample) and report quality",
        description="Codec round trip at several bitrates with PESQ-WB and STOI against the input (pip install "
        "-e '.[metrics]'). Any length: the codec streams 20 s at a time; audio over 16 s is scored in equal pieces "
        "of at most 16 s (PESQ is defined on 8-20 s) and averaged.",
    )
    sp.add_argument("input", nargs="?", help="audio file (default: the bundled sample)")
    sp.add_argument("--codebooks", type=int, nargs="+", default=[1, 2, 4, 8])
    sp.add_argument("--out", "--out-dir", dest="out_dir", default=None,
                    help="folder to keep the .tsk and .wav files in (default: a temporary folder, removed)")
    weights_arg(sp)
    backend_args(sp)
    sp.set_defaults(func=cmd_roundtrip)

    sp = sub.add_parser(
        "serve",
        help="run the WebSocket server (codec and chat modes) with the shipped weights",
        description="Serve the streaming protocol of docs/protocol.md over WebSocket, with /metrics and /healthz "
        "on the same port. Models warm up before the port opens.",
    )
    sp.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    sp.add_argument("--max-sessions", type=int, default=64,
                    help="concurrent sessions before 'busy', per worker (default 64)")
    sp.add_argument("--max-conversations", type=int, default=None,
                    help="chat conversations at once per worker before a new one is refused 'busy' at its hello; 0: "
                    f"no limit (default: {CONVERSATIONS_PER_WORKER} when the Talker speaks the answers, what one "
                    "worker held in `talkstream bench chat` on 2 cores; none for echo and transcribe)")
    sp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the ports, each with its own models (default: one per core; 1: one process); "
        "with --ray, the replicas (default: autoscaled on live sessions)",
    )
    sp.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="serve on a Ray cluster (auto, or HOST:PORT of its head) through Ray Serve, each replica a worker "
        "(deploy/ray/README.md; needs the ray extra)",
    )
    sp.add_argument(
        "--ray-placement-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="with --ray: how long replicas may wait for room on the cluster before serve exits with what is missing "
        "(default 10; a cluster that adds nodes on demand needs minutes)",
    )
    sp.add_argument("--max-message-bytes", type=int, default=64 * 1024, help="largest message accepted")
    sp.add_argument("--max-session-s", type=float, default=3600.0, help="longest session, seconds")
    sp.add_argument("--idle-timeout-s", type=float, default=30.0, help="close a session silent this long")
    sp.add_argument("--token", default=None, help="shared secret clients must send in hello (or TALKSTREAM_TOKEN)")
    sp.add_argument(
        "--frames-per-step",
        type=int,
        default=2,
        choices=[1, 2, 3, 4, 6],
        help="codec frames (13.3 ms each) per step: 1 = lowest latency, more = more sessions per core",
    )
    sp.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="onnx",
        help="codec steps in onnxruntime (default; graphs exported at start-up) or torch eager",
    )
    # int8 by default: the same codes, a cheaper step and a smaller process, and it held as many or more sessions
    # than fp32 side by side (docs/benchmarks.md)
    onnx_args(sp, precision="int8")
    sp.add_argument("--video-weights", default=None,
                    help="video codec checkpoint folder for camera/video frames (default: the shipped weights)")
    sp.add_argument(
        "--gather-ms",
        type=float,
        default=0.0,
        help="wait this long to batch sessions' codec steps (0: never wait; more: more sessions per core)",
    )
    sp.add_argument("--step-interval-ms", type=float, default=0.0,
                    help="the least time between the starts of two batched codec steps, scaled by the share of "
                    "the last second the codec thread was busy: under load, sessions' frames arriving within it "
                    "share one step (less CPU per session); an idle engine makes no frame wait. Default 0: off "
                    "(12 saves WebSocket sessions 5-25%% of the CPU but adds WebRTC latency)")
    sp.add_argument("--step-interval-fixed", action="store_true",
                    help="apply --step-interval-ms whatever the load, instead of scaling it by the codec thread's "
                    "busy share")
    sp.add_argument("--codec-threads", type=int, default=1,
                    help="threads of each worker's batched codec step (onnxruntime's intra-op threads)")
    sp.add_argument(
        "--allow-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser origin allowed to connect (repeatable; default: localhost pages only)",
    )
    sp.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="HTTP port for the web page and WebRTC signaling (POST /offer) (default 8080; 0: any free port)",
    )
    sp.add_argument("--no-http", action="store_true", help="serve WebSocket only: no page, no WebRTC")
    sp.add_argument(
        "--ice-server",
        action="append",
        default=None,
        metavar="URL[,USER,CREDENTIAL]",
        help="STUN/TURN server for WebRTC (repeatable), e.g. turn:turn.example.org:3478,user,secret; "
        "default none: host candidates only, nothing outside is contacted",
    )
    sp.add_argument("--public-host", default=None, metavar="HOST[:PORT]",
                    help="phone calls: the public host (a tunnel's) that reaches the WebSocket port; POST "
                    "/twilio/voice connects calls to wss://HOST/twilio (default: the webhook request's Host)")
    sp.add_argument("--twilio-auth-token", default=None,
                    help="phone calls: refuse (403) a POST /twilio/voice without Twilio's signature made with this "
                    "account auth token (or TWILIO_AUTH_TOKEN; default: unchecked)")
    sp.add_argument("--turn-end", choices=("semantic", "silence"), default="semantic",
                    help="chat: how a user's turn ends. semantic (default): at each pause the end-of-turn head judges "
                    "whether the turn sounds complete (ends ~130 ms into the pause) or not (waits up to 1.6 s), and "
                    "speech over a reply is judged a backchannel (the reply goes on) or an interruption; silence: "
                    "480 ms of silence ends a turn and any speech interrupts. A client's hello may choose (turn_end)")
    weights_arg(sp)
    serve_thinker_args(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser(
        "client",
        help="stream an audio file to a server in real time and save what comes back",
        description="Stream IN in 20 ms frames (real time unless --fast) and write the returned audio to --out.",
    )
    sp.add_argument("input", help="audio file to send")
    sp.add_argument("--out", required=True, help="WAV file for the audio that comes back")
    sp.add_argument("--url", default="ws://127.0.0.1:8765", help="server URL (default ws://127.0.0.1:8765)")
    sp.add_argument("--mode", choices=["codec", "chat"], default="codec")
    sp.add_argument("--codebooks", type=int, default=8, help="codebooks 1..8 (bitrate)")
    sp.add_argument("--sample-rate", type=int, default=24_000, help="rate to send and receive at (8000..48000)")
    sp.add_argument("--token", default=None, help="shared secret, if the server wants one (or TALKSTREAM_TOKEN)")
    sp.add_argument("--fast", action="store_true",
                    help="send as fast as the server takes it, not in real time: it reads no faster than it "
                         "processes, so nothing is dropped")
    sp.add_argument("--tail", type=float, default=2.0, help="seconds to keep listening after the input ends")
    sp.set_defaults(func=cmd_client)

    sp = sub.add_parser("train", help="train a model (codec, thinker, talker)",
                        description="Train talkstream's learned parts.")
    tsub = sp.add_subparsers(dest="what", required=True, metavar="WHAT")
    tc = tsub.add_parser(
        "codec",
        help="train the audio codec (resumes from OUT/checkpoint.pt)",
        description="Train the audio codec on a folder of audio files. Rerun to resume.",
    )
    tc.add_argument("--data", default="data/speech", help="folder of audio files, or a corpus with manifest.jsonl")
    tc.add_argument("--out", default="runs/codec", help="run folder (checkpoint, log, export)")
    tc.add_argument("--steps", type=int, default=6000, help="total optimiser steps (lr schedule length)")
    tc.add_argument("--warmup-steps", type=int, default=1000, help="autoencoder-only steps before quantization")
    tc.add_argument("--batch-size", type=int, default=10)
    tc.add_argument("--lr", type=float, default=1e-3)
    tc.add_argument("--checkpoint-minutes", type=float, default=3.0)
    tc.add_argument("--max-minutes", type=float, default=0.0, help="stop this run after N minutes (0: no limit)")
    tc.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    tc.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (torchrun for several GPUs)")
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--init", default="", help="warm start from a codec checkpoint folder (no warm-up, no k-means)")
    tc.add_argument("--codec-id", default="", help="id of the trained codec (new tokens need a new id)")
    tc.add_argument("--segment-seconds", type=float, default=0.8, help="length of each training crop")
    tc.add_argument("--weight-whisper", type=float, default=0.0,
                    help="Whisper-encoder states of the decoded vs the input audio (steers by what a recogniser hears)")
    tc.add_argument("--weight-whisper-mel", type=float, default=0.0, help="Whisper's log-mel of decoded vs input")
    tc.add_argument("--weight-semantic", type=float, default=0.0,
                    help="first codebook regressed onto the input's Whisper states (content in codebook 1)")
    tc.add_argument("--bandlimit-prob", type=float, default=0.0, help="share of crops low-passed at 4 or 8 kHz")
    tc.add_argument("--encoder", choices=("conv", "mel"), default="conv",
                    help="a fresh codec's encoder: conv (learned, v1/v2) or mel (fixed causal log-mel, v3)")
    tc.add_argument("--mel-bands", type=int, default=80, help="bands of the mel encoder (its latent size)")
    tc.add_argument("--init-decoder", default="",
                    help="a fresh codec's decoder starts from this codec's decoder (tensors of matching shape)")
    tc.add_argument("--decoder-only", action="store_true",
                    help="train only the decoder of the --init codec: encoder and codebooks frozen, tokens unchanged")
    tc.add_argument("--subframes", type=int, default=0,
                    help="with --init: widen its decoder to this many STFT windows per frame (2: three-quarter "
                    "overlap, same latency), warm-started from its one-window head (0: as it is)")
    tc.add_argument("--pitch-bits", type=int, default=0,
                    help="with --init (a v3 codec): codec v4, the pitch in the bitstream at this many bits per frame "
                    "(6: 450 bit/s) and a pitch-excited decoder warm-started from the init's (0: as it is)")
    tc.add_argument("--excited-blocks", type=int, default=4, help="with --pitch-bits: the excited decoder's blocks")
    tc.add_argument("--weight-complex", type=float, default=1.0,
                    help="the phase-aware complex STFT loss (0 for codec v4, whose phase comes from its excitation)")
    tc.set_defaults(func=cmd_train_codec)

    sp = sub.add_parser(
        "demo",
        help="Gradio app: hear the codec round trip at any bitrate, chat with the models",
        description="A web app (Gradio): record or upload speech, hear it through the codec with PESQ/STOI and "
        "spectrograms; a chat tab with the Thinker-Talker. Needs pip install 'talkstream[demo]'.",
    )
    sp.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sp.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    weights_arg(sp)
    backend_args(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("export", help="export ONNX graphs", description="Export streaming steps as ONNX graphs.")
    esub = sp.add_subparsers(dest="what", required=True, metavar="WHAT")
    ec = esub.add_parser(
        "codec",
        help="the codec's encode/decode steps with explicit state, checked, with manifest.json",
        description="Write the codec's streaming steps as ONNX graphs (opset 17, state as inputs and outputs, "
        "dynamic batch axis), one per operation, codebook count and frames per step, checked with onnx.checker, "
        "with manifest.json (names, shapes, sha256, versions). Use them with --onnx-dir.",
    )
    ec.add_argument("--out", required=True, help="folder to write")
    ec.add_argument("--codebooks", type=int, nargs="+", default=[8], help="codebook counts (default 8)")
    ec.add_argument("--frames-per-step", type=int, nargs="+", default=[1, 2], help="frames per step (default 1 2)")
    ec.add_argument(
        "--ops", nargs="+", choices=["encode", "decode", "roundtrip"], default=["encode", "decode", "roundtrip"]
    )
    ec.add_argument("--int8", action="store_true", help="also write int8 (dynamic quantization) copies")
    weights_arg(ec)
    ec.set_defaults(func=cmd_export_codec)

    sp = sub.add_parser("data", help="make training data", description="Make corpora from registry-shipped voices.")
    dsub = sp.add_subparsers(dest="what", required=True, metavar="WHAT")
    ds = dsub.add_parser("speech", help="speech corpus from the TTS voices (resumes)")
    ds.add_argument("--out", default="data/speech")
    ds.add_argument("--minutes", type=float, default=40.0, help="minutes of training speech")
    ds.add_argument("--eval-per-voice", type=int, default=16)
    ds.add_argument("--seed", type=int, default=0)
    ds.set_defaults(func=cmd_data_speech)

    sp = sub.add_parser("bench", help="benchmarks (results as JSON and a table)", description="Benchmarks.")
    bsub = sp.add_subparsers(dest="what", required=True, metavar="WHAT")
    bc = bsub.add_parser(
        "codec",
        help="talkstream codec vs Opus on held-out voices",
        description="Codec at 1/2/4/8 codebooks vs Opus 6/8/12 kbps on held-out voices: what a recogniser hears "
        "(WER vs the text, drift vs its transcript of the original; needs the asr extra), DNSMOS OVRL, PESQ-WB, STOI, "
        "speed, latency, decoder MFLOPs.",
    )
    bc.add_argument("--data", default="data/speech", help="corpus with an eval split (talkstream data speech)")
    bc.add_argument("--files", type=int, default=24, help="held-out files to use")
    bc.add_argument("--codebooks", type=int, nargs="+", default=[1, 2, 4, 8], help="codebook counts to measure")
    bc.add_argument("--opus", type=int, nargs="*", default=[6000, 8000, 12000], help="Opus bitrates beside it (bps)")
    bc.add_argument("--out", default=None, help="write results JSON here")
    bc.add_argument("--baseline", default=None,
                    help="a second codec's checkpoint folder measured side by side in the same run (e.g. codec v3)")
    bc.add_argument("--real", default="/usr/share/pocketsphinx/test/data/librivox",
                    help="real recordings with a `transcription` file, a second table (default: the LibriVox "
                    "readings of Debian's pocketsphinx-testdata)")
    bc.add_argument("--no-real", action="store_true", help="leave the real recordings out")
    weights_arg(bc)
    bc.set_defaults(func=cmd_bench_codec)
    bs = bsub.add_parser(
        "serve",
        help="N concurrent real-time codec sessions against a server on loopback",
        description="Start `talkstream serve` as its own process, run N real-time clients per level for a fixed "
        "time, and report frame latency percentiles, late frames, drops, server CPU and memory.",
    )
    bs.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 10, 20], help="concurrency levels to run")
    bs.add_argument("--seconds", type=float, default=10.0, help="seconds each session streams")
    bs.add_argument("--frames-per-step", type=int, default=2, help="the server's --frames-per-step")
    bs.add_argument("--gather-ms", type=float, default=0.0, help="the server's --gather-ms")
    bs.add_argument("--backend", choices=["torch", "onnx"], default="onnx", help="the server's --backend")
    bs.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["int8"],
                    help="the codec graphs' precision (the server's --precision; default int8, as served; onnx "
                    "backend): both are measured side by side in one run with `--precision fp32 int8`")
    bs.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="the server's --workers: several counts are measured side by side in one run (e.g. 1 2)")
    bs.add_argument("--step-interval-ms", type=float, nargs="+", default=None,
                    help="the server's --step-interval-ms (default: the server's own): several values are measured "
                    "side by side in one run (e.g. 0 12)")
    bs.add_argument("--out", default=None, help="write results JSON here")
    bs.add_argument("--weights", default=None, help="codec checkpoint folder (default: the shipped weights)")
    bs.set_defaults(func=cmd_bench_serve)
    bch = bsub.add_parser(
        "chat",
        help="N conversations at once, each asking held-out questions in turn: voice-to-voice latency and answers",
        description="Start `talkstream serve` with the built-in Thinker-Talker as its own process; per level, N "
        "WebSocket conversations at once, each asking --questions held-out questions in real time and listening "
        "to each whole reply before the next; report voice to voice (end of speech to first reply audio) p50/p95, "
        "turns answered and right, turns that got neither a reply nor an error, sessions refused busy, and the "
        "server's CPU per conversation-second. One conversation alone always runs too, for the ratio.",
    )
    bch.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8],
                     help="conversations at once, per level (1 is always run)")
    bch.add_argument("--questions", type=int, default=2, help="questions each conversation asks, one after another")
    bch.add_argument("--server-option", action="append", default=[], metavar="OPT",
                     help="an option passed to `talkstream serve` (repeat; e.g. --server-option=--max-conversations=8)")
    bch.add_argument("--workers", type=int, default=1, help="the server's --workers")
    bch.add_argument("--thinker", choices=["builtin", "transcribe", "echo"], default="builtin",
                     help="the server's --thinker (default: the built-in answerer)")
    bch.add_argument("--out", default=None, help="write results JSON here")
    bch.set_defaults(func=cmd_bench_chat)
    bph = bsub.add_parser(
        "phone",
        help="held-out questions asked over a phone line (a scripted Twilio media stream, 8 kHz G.711): answers "
        "right and voice-to-voice latency",
        description="Start `talkstream serve` as its own process; one call per held-out question on /twilio, the "
        "question spoken in an eval voice at 8 kHz mu-law in real time; the reply as the independent recogniser "
        "hears it over the line (the answer heard, and word for word), and the end of the caller's speech to the "
        "first reply audio; the same question over the WebSocket path on the same server, side by side.",
    )
    bph.add_argument("--questions", type=int, default=8, help="held-out questions, one call each")
    bph.add_argument("--thinker", choices=["builtin", "echo"], default="builtin", help="the server's --thinker")
    bph.add_argument("--no-websocket", action="store_true",
                     help="skip asking each question over the WebSocket path too (the side-by-side latency)")
    bph.add_argument("--out", default=None, help="write results JSON here")
    bph.set_defaults(func=cmd_bench_phone)
    bso = bsub.add_parser(
        "soak",
        help="many connect/converse/disconnect cycles: is anything left behind (sessions, tasks, threads, files)?",
        description="Start `talkstream serve` as its own process; run --cycles WebSocket sessions, --concurrency at "
        "once, in turn a chat conversation (a sentence said, the reply heard, a clean end), a codec echo and a "
        "session dropped mid-stream; compare the server's open sessions, asyncio tasks, threads, open file "
        "descriptors and memory before and after. Exits 1 when something was left behind.",
    )
    bso.add_argument("--cycles", type=int, default=1000, help="sessions to open and close")
    bso.add_argument("--concurrency", type=int, default=8, help="sessions at once")
    bso.add_argument("--thinker", choices=["echo", "builtin"], default="echo",
                     help="the server's --thinker for the chat cycles (echo: says the turn back)")
    bso.add_argument("--out", default=None, help="write results JSON here")
    bso.set_defaults(func=cmd_bench_soak)
    bw = bsub.add_parser(
        "webrtc",
        help="N aiortc clients against a server in its own process(es): mouth-to-ear latency over WebRTC",
        description="Start `talkstream serve` as its own process(es), connect N aiortc clients per level (codec "
        "echo, 8 codebooks), send speech bursts and time each burst's echo: mouth-to-ear p50/p95, jitter, and the "
        "largest N with p95 under 150 ms.",
    )
    bw.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrency levels to run")
    bw.add_argument("--seconds", type=float, default=10.0, help="seconds each session streams")
    bw.add_argument("--frames-per-step", type=int, default=2, help="the server's --frames-per-step")
    bw.add_argument("--backend", choices=["torch", "onnx"], default="onnx", help="the server's --backend")
    bw.add_argument(
        "--client-jitter-frames",
        type=int,
        default=4,
        help="20 ms packets each client holds before playout (default 4: aiortc's; a browser adapts its own)",
    )
    bw.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="the server's --workers: several counts are measured side by side in one run (e.g. 1 2)")
    bw.add_argument("--step-interval-ms", type=float, nargs="+", default=None,
                    help="the server's --step-interval-ms (default: the server's own): several values are measured "
                    "side by side in one run (e.g. 0 12)")
    bw.add_argument("--out", default=None, help="write results JSON here")
    weights_arg(bw)
    bw.set_defaults(func=cmd_bench_webrtc)
    bb = bsub.add_parser(
        "backends",
        help="torch vs onnxruntime fp32 vs int8: codec step latency, streams per core, quality",
        description="Time the codec's encode and decode steps (one thread) on each backend, the real-time streams "
        "one core holds with batched steps, and each backend's PESQ/STOI on a few held-out files.",
    )
    bb.add_argument("--data", default="data/speech", help="corpus with an eval split (else: the bundled sample)")
    bb.add_argument("--files", type=int, default=4, help="held-out files for the quality columns")
    bb.add_argument("--steps", type=int, default=300, help="timed steps per backend and step")
    bb.add_argument(
        "--frames-per-step", type=int, nargs="+", default=[2, 6], help="frames per batched step (streams per core)"
    )
    bb.add_argument("--providers", default=None, help="onnxruntime providers in order (default tensorrt,cuda,cpu)")
    bb.add_argument("--out", default=None, help="write results JSON here")
    weights_arg(bb)
    bb.set_defaults(func=cmd_bench_backends)
    add_model_commands(sub, tsub, dsub, bsub, esub)
    add_video_commands(sub, tsub, bsub)
    add_turn_commands(tsub, dsub, bsub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, as benchmark results record it
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except UserError as e:  # anything else is a bug: its traceback is printed
        if args.verbose:
            traceback.print_exc()
        print(f"talkstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("talkstream: interrupted", file=sys.stderr)
        return 130
    return 0


