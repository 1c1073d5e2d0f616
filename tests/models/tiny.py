"""Tiny randomly initialised models for tests: the real classes, small enough to run in milliseconds."""

import math

import torch

from talkstream.models.phonemes import phonemize
from talkstream.models.talker import Talker, TalkerConfig
from talkstream.models.thinker import Thinker, ThinkerConfig


def tiny_thinker():
    torch.manual_seed(0)
    return Thinker(ThinkerConfig(latent_dim=16, dim=32, layers=2, heads=2)).eval()


def tiny_talker():
    torch.manual_seed(0)
    names = ["<pad>", "<unk>", "_", "_:", *sorted({p for w in ["hello", "there", "seven"]
                                                    for p in phonemize(w).phonemes})]
    talker = Talker(TalkerConfig(phonemes=names, num_codebooks=3, codebook_size=64, dim=32, layers=2, heads=2,
                                 hidden_dim=32)).eval()  # the tiny Thinker's width
    # Every phoneme lasts 2 frames (log(1 + 2)), so what a test hears does not hang on random durations.
    torch.nn.init.zeros_(talker.duration.weight)
    torch.nn.init.constant_(talker.duration.bias, math.log(3))
    return talker
