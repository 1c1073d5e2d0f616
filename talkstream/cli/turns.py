"""CLI: the turn heads' data, training and benchmark (`talkstream data turns`, `train turn-heads`, `bench turns`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from talkstream.errors import UserError


def cmd_data_turns(args) -> None:
    from talkstream.training.turn_data import make, make_barge

    files = make(Path(args.out), "eval")
    files += make(Path(args.out), "train", per_voice=args.per_voice, seed=args.seed)
    files += make_barge(Path(args.out), seed=args.seed)
    files += make(Path(args.out), "trainm", per_voice=args.per_voice, seed=args.seed)
    files += make(Path(args.out), "trainx", per_voice=args.per_voice, seed=args.seed)
    print(f"{len(files)} files in {args.out}")


def cmd_train_turn_heads(args) -> None:
    from talkstream.training.turn_heads import train_turn_heads

    reports = train_turn_heads(Path(args.data), Path(args.out), epochs=args.epochs, seed=args.seed,
                               members=args.members, command=["talkstream", *sys.argv[1:]])
    for task, r in reports.items():
        print(f"turn_{task}: threshold {r['threshold']}, held-out accuracy {r['eval']['accuracy']:.3f} -> "
              f"{Path(args.out) / f'turn_{task}'}")


def cmd_bench_turns(args) -> None:
    from talkstream.bench.results import write_result
    from talkstream.bench.turns import run_turns_bench
    from talkstream.streaming.turn_taking import TurnTakingConfig

    try:
        given = {"pause_ms": args.pause_ms, "barge_decide_ms": args.barge_decide_ms, "early_ms": args.early_ms,
                 "early_p": args.early_p, "silence_p": args.silence_p}
        config = TurnTakingConfig(**{k: v for k, v in given.items() if v is not None})
        if args.silence_p == 0:
            config = dataclasses.replace(config, silence_p=None)
    except ValueError as e:
        raise UserError(str(e)) from None
    result = run_turns_bench(limit=args.sentences, seed=args.seed, real=not args.no_real,
                             server_questions=args.server_questions, config=config,
                             heads=Path(args.heads) if args.heads else None)
    write_result(args.json, result, sys.argv[1:])


def add_turn_commands(train_sub, data_sub, bench_sub) -> None:
    dp = data_sub.add_parser("turns", help="speech for the turn heads: complete and cut turns, backchannels (resumes)",
                             description="Windows of speech from the registry's TTS voices for the end-of-turn and "
                             "barge-in heads: complete sentences, sentences cut at a word or followed by a filler, "
                             "backchannels and interruptions. Training voices and evaluation voices/sentences are "
                             "disjoint. One file per voice; rerun to resume.")
    dp.add_argument("--out", default="runs/turn_data")
    dp.add_argument("--per-voice", type=int, default=24, help="sentences per espeak voice (x3 for Kokoro and Piper)")
    dp.add_argument("--seed", type=int, default=0)
    dp.set_defaults(func=cmd_data_turns)

    tp = train_sub.add_parser("turn-heads", help="train the end-of-turn and barge-in heads on `data turns`",
                              description="Train both turn heads over Whisper tiny.en's frozen encoder (its states "
                              "are cached beside the data). Writes OUT/turn_end and OUT/turn_barge with training.json "
                              "(threshold, check and held-out rates).")
    tp.add_argument("--data", default="runs/turn_data")
    tp.add_argument("--out", default="runs/turn_heads", help="folder for the two checkpoints "
                    "(talkstream/weights to ship them)")
    tp.add_argument("--epochs", type=int, default=30)
    tp.add_argument("--members", type=int, default=5, help="heads per task, each from its own seed, averaged")
    tp.add_argument("--seed", type=int, default=0)
    tp.set_defaults(func=cmd_train_turn_heads)

    bp = bench_sub.add_parser("turns", help="turn-taking on held-out speech: turn heads vs silence alone",
                              description="Mid-sentence pauses cut off, end-of-turn delay on complete turns, "
                              "backchannels talked through and interruptions stopped within 300 ms, for the turn "
                              "heads and for silence alone, on held-out voices and sentences (and LibriVox readings "
                              "when pocketsphinx-testdata is installed).")
    bp.add_argument("--sentences", type=int, default=None, help="sentences per voice (default: all 40)")
    bp.add_argument("--no-real", action="store_true", help="leave out the LibriVox readings")
    bp.add_argument("--server-questions", type=int, default=0,
                    help="also measure end of speech to first reply audio over WebSocket for N held-out questions "
                    "with the built-in Thinker-Talker, both policies on one server")
    # Unset: the server's own (streaming/turn_taking.py TurnTakingConfig), so the bench measures what serves.
    bp.add_argument("--pause-ms", type=float, help="silence before the end-of-turn head is asked (default: the "
                    "server's, 64)")
    bp.add_argument("--barge-decide-ms", type=float, help="speech before the barge-in head decides (the server's: 150)")
    bp.add_argument("--early-ms", type=float, help="the barge-in head's first look (--early-p; the server's: 100)")
    bp.add_argument("--early-p", type=float,
                    help="at --early-ms, P(backchannel) below this is an interruption at once (0: no first look)")
    bp.add_argument("--silence-p", type=float, help="VAD probability below which a window in a turn is silence "
                    "(the server's: 0.6; 0: the VAD's own, 0.35)")
    bp.add_argument("--heads", default=None, help="a folder with turn_end and turn_barge to measure instead of the "
                    "shipped heads (`train turn-heads --out`; the --server-questions part serves the shipped ones)")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--json", default="bench-results/turns.json")
    bp.set_defaults(func=cmd_bench_turns)
