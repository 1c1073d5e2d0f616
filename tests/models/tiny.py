"""Tiny randomly initialised models for tests: the real classes, small enough to run in milliseconds."""

import math

import torch

from talkstream.models.talker import Talker, TalkerConfig
from talkstream.models.talker_units import text_units
from talkstream.models.thinker import Thinker, ThinkerConfig


def tiny_thinker():
    torch.manual_seed(0)
    return Thinker(ThinkerConfig(latent_dim=16, dim=32, layers=2, heads=2)).eval()


def tiny_talker():
    torch.manual_seed(0)
    names = ["<pad>", "<unk>", *sorted(set(text_units("hello there, seven.")))]
    talker = Talker(TalkerConfig(phonemes=names, num_codebooks=3, codebook_size=64, latent_dim=16, dim=32,
                                 layers=2, heads=2, hidden_dim=32)).eval()  # the tiny Thinker's width
    talker.codebooks.normal_(generator=torch.Generator().manual_seed(1))  # not the global RNG tests draw from
    # Every unit lasts 2 frames (log(1 + 2)), so what a test hears does not hang on random durations.
    torch.nn.init.zeros_(talker.duration.weight)
    torch.nn.init.constant_(talker.duration.bias, math.log(3))
    return talker
