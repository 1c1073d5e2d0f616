"""CLI commands of the video codec: video encode|decode, train video, bench video."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from talkstream.bench.results import write_result
from talkstream.cli.files import out_file


def cmd_train_video(args) -> None:
    command = "talkstream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.version == 2:
        from talkstream.codecs.video.train_v2 import VideoV2TrainConfig, train_video_codec_v2

        cfg2 = VideoV2TrainConfig(
            out=args.out, steps=args.steps, batch_size=args.batch_size, clip_frames=args.clip_frames, crop=args.crop,
            lr=args.lr if args.lr is not None else 1e-3, checkpoint_minutes=args.checkpoint_minutes,
            max_minutes=args.max_minutes, threads=args.threads, seed=args.seed,
        )  # fmt: skip
        export = train_video_codec_v2(cfg2, command=command)
        print(f"weights exported to {export} (copy to talkstream/weights/video_codec_v2 to ship them)")
        return
    from talkstream.codecs.video.train import VideoTrainConfig, train_video_codec

    cfg = VideoTrainConfig(
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        clip_frames=args.clip_frames,
        crop=args.crop,
        lr=args.lr if args.lr is not None else 2e-3,
        checkpoint_minutes=args.checkpoint_minutes,
        max_minutes=args.max_minutes,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    export = train_video_codec(cfg, command=command)
    print(f"weights exported to {export} (copy to talkstream/weights/video_codec to ship them)")


def cmd_bench_video(args) -> None:
    out = out_file(args.out)  # its folder now, not after the run
    if args.version == 2:
        from talkstream.bench.video_v2 import run_video_v2_bench
        from talkstream.checkpoint import load_video_codec_v2

        codec = load_video_codec_v2(args.weights)
        write_result(
            out, run_video_v2_bench(codec, clips=args.clips, frames=args.frames, kbps=tuple(args.kbps)), args.argv
        )
        return
    from talkstream.bench.video import run_video_bench

    results = run_video_bench(_video_codec(args), clips=args.clips, frames=args.frames, threads=tuple(args.threads))
    write_result(out, results, args.argv)


def add_video_commands(sub, train_sub, bench_sub) -> None:
    vp = sub.add_parser(
        "video",
        help="video codec: encode a video to .tsv tokens, decode them back",
        description="The causal video codec on files (PyAV reads and writes the containers).",
    )
    vsub = vp.add_subparsers(dest="what", required=True, metavar="WHAT")
    sp = vsub.add_parser(
        "encode",
        help="video file -> .tsv token file",
        description="Encode a constant-frame-rate video (any size: scaled to fit the codec's "
        "128x128 keeping the aspect ratio, edge-padded) into video tokens.",
    )
    sp.add_argument("input", help="video file (mp4, mkv, webm, gif, ...)")
    sp.add_argument("output", help="token file to write (.tsv; .tsv2 with --version 2)")
    sp.add_argument("--weights", default=None, help="video codec checkpoint (default: the shipped weights)")
    sp.add_argument("--version", type=int, choices=(1, 2), default=1, help="2: the entropy-coded codec v2")
    sp.add_argument(
        "--quality", type=float, default=0.75, help="v2: quality in [0, 1] (each frame costs what it needs)"
    )
    sp.add_argument("--kbps", type=float, default=None, help="v2: hold this bitrate instead of a fixed quality")
    sp.set_defaults(func=cmd_video_encode)
    sp = vsub.add_parser(
        "decode",
        help=".tsv token file -> video file",
        description="Decode video tokens to a video at the source's size and frame rate (H.264).",
    )
    sp.add_argument("input", help="token file (.tsv)")
    sp.add_argument("output", help="video file to write (.mp4, .mkv)")
    sp.add_argument("--weights", default=None, help="video codec checkpoint (default: the shipped weights)")
    sp.set_defaults(func=cmd_video_decode)

    tp = train_sub.add_parser(
        "video",
        help="train the video codec on clips made on the fly (resumes)",
        description="Train the causal video codec on procedural clips and animated "
        "scikit-image photos (pip install 'talkstream[video]'). Rerun to resume.",
    )
    tp.add_argument("--out", default="runs/video", help="run folder (checkpoint, log, export)")
    tp.add_argument("--steps", type=int, default=3000, help="total optimiser steps (lr schedule length)")
    tp.add_argument("--batch-size", type=int, default=8, help="clips per step")
    tp.add_argument("--clip-frames", type=int, default=4, help="frames per clip (gradients through the memory)")
    tp.add_argument("--crop", type=int, default=64, help="square crop trained on (multiple of 8)")
    tp.add_argument(
        "--version",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: the fixed-rate token codec; 2: the entropy-coded conditional codec (codec_v2.py)",
    )
    tp.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 for v1, 1e-3 for v2)")
    tp.add_argument("--checkpoint-minutes", type=float, default=3.0)
    tp.add_argument("--max-minutes", type=float, default=0.0, help="stop this run after N minutes (0: no limit)")
    tp.add_argument("--threads", type=int, default=1, help="CPU threads (0: all)")
    tp.add_argument("--device", default="auto", help="auto, cpu, cuda")
    tp.add_argument("--seed", type=int, default=0)
    tp.set_defaults(func=cmd_train_video)

    bp = bench_sub.add_parser(
        "video",
        help="video codec vs H.264 (libx264 zerolatency) on held-out clips",
        description="PSNR, SSIM, bits per pixel, encode+decode fps on 1 and 2 threads and "
        "first-frame latency, talkstream vs H.264 at matched and lower bitrates.",
    )
    bp.add_argument("--clips", type=int, default=8, help="held-out clips (4 camera moves, then procedural)")
    bp.add_argument("--frames", type=int, default=50, help="frames per clip (25 fps)")
    bp.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    bp.add_argument(
        "--version",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: the entropy-coded codec v2 against x264 at equal bitrates, static vs moving cost",
    )
    bp.add_argument("--kbps", type=float, nargs="+", default=[32, 64, 128], help="v2's rate-control targets")
    bp.add_argument("--out", default=None, help="write results JSON here")
    bp.add_argument("--weights", default=None, help="video codec checkpoint (default: the shipped weights)")
    bp.set_defaults(func=cmd_bench_video)


def _video_codec(args):
    from talkstream.checkpoint import load_video_codec

    return load_video_codec(args.weights)


def cmd_video_encode(args) -> None:
    out_file(args.output)
    if args.version == 2:
        from talkstream.checkpoint import load_video_codec_v2
        from talkstream.codecs.video.files_v2 import encode_file_v2

        h = encode_file_v2(load_video_codec_v2(args.weights), args.input, args.output, args.quality, args.kbps)
        secs = h["num_frames"] * h["fps"][1] / h["fps"][0]
        size = Path(args.output).stat().st_size
        print(
            f"{args.output}: {h['num_frames']} frames, {secs:.2f} s, {size} bytes ({size * 8 / secs / 1000:.1f} kbps)"
        )
        return
    from talkstream.codecs.video.files import encode_file

    h = encode_file(_video_codec(args), args.input, args.output)
    secs = h["num_frames"] / h["frame_rate"]
    size = Path(args.output).stat().st_size
    print(
        f"{args.output}: {h['num_frames']} frames of {h['num_codebooks']} tokens at {h['frame_rate']:.3g} fps, "
        f"{secs:.2f} s, {size} bytes ({size * 8 / max(secs, 1e-9) / 1000:.1f} kbps with header)"
    )


def cmd_video_decode(args) -> None:
    out_file(args.output)
    if Path(args.input).is_file() and Path(args.input).read_bytes()[:4] == b"TSV2":
        from talkstream.checkpoint import load_video_codec_v2
        from talkstream.codecs.video.files_v2 import decode_file_v2

        h = decode_file_v2(load_video_codec_v2(args.weights), args.input, args.output)
        sh, sw = h["source_size"]
        print(f"{args.output}: {h['num_frames']} frames, {sw}x{sh}, {h['duration_s']} s")
        return
    from talkstream.codecs.video.files import decode_file

    h = decode_file(_video_codec(args), args.input, args.output)
    sh, sw = h["source_size"]
    print(f"{args.output}: {h['num_frames']} frames, {sw}x{sh} at {h['frame_rate']:.3g} fps, {h['duration_s']} s")
