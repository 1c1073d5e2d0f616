"""Errors of the models that a user can act on (the CLI prints them as one line and exits 2)."""

from talkstream.errors import UserError


class ThinkerEndpointError(UserError, RuntimeError):
    """The chat-completions endpoint failed or answered something that is not a chat-completions stream."""


class EspeakUnavailable(UserError, RuntimeError):
    """libespeak-ng is missing or fails to start (neither the espeakng-loader wheel nor the system library)."""
