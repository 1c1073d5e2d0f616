"""The `talkstream` command: one parser, a subcommand per job (main.py: serve, encode/decode, bench, ...; model.py:
chat, say, the Thinker's and Talker's data and training; video.py: the video codec's). The top floor: it may import
every other part of the package, and nothing imports it."""

from talkstream.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
