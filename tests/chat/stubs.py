"""The base of the tests' chat-model stand-ins: a chat model and its one session in one object, with every member of
the `ChatSession` seam (replies in the client's codebooks, nothing heard ahead, no typed text). A stand-in adds
`respond`, and its `reply_format` where its replies differ."""

from __future__ import annotations

from talkstream.chat.protocol import ReplyFormat


class StubModel:
    reply_format = ReplyFormat()

    def __init__(self):
        self.turns = 0

    def warmup(self) -> None:
        pass

    def open_session(self):
        return self

    def close(self) -> None:
        pass

    async def listen_ahead(self, chunks, pcm_chunks=None) -> None:
        pass

    def committed_text(self) -> str:
        return ""

    def type_text(self, text: str) -> None:
        pass
