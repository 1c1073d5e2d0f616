"""Moved to `talkstream.protocol` (wire format and state machine); this name stays for code written against it."""

from talkstream.protocol import *  # noqa: F403
from talkstream.protocol import __all__  # noqa: F401
