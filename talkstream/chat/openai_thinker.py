"""A Thinker that writes its reply with any OpenAI-compatible chat-completions endpoint (llama.cpp, vLLM, Ollama).

It hears with the built-in Thinker's ears (Whisper tiny.en on the user's own audio: speech to text), sends the
transcript as the user's message, and streams the
reply's text deltas (server-sent events) to the Talker, which speaks each word as it arrives. It has no hidden
states, so the Talker's hidden track gets none. It keeps no conversation: each `reply` is given its user's history
(a bounded deque the caller owns, one per conversation), sends it as context and adds the new exchange to it.

    talkstream serve --thinker openai --thinker-url http://127.0.0.1:8080/v1 --thinker-model llama3
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from talkstream.chat.protocol import Heard
from talkstream.models import text as tx
from talkstream.models.errors import ThinkerEndpointError

log = logging.getLogger(__name__)
SYSTEM_PROMPT = ("You are a voice assistant. Your words are spoken aloud: answer in one or two short plain "
                 "sentences, no lists, no markdown.")


class OpenAIThinker:
    """Hears with `listener` (an `EarsThinker`: its hearing, ahead of the end of the turn too) and answers with the
    endpoint; it sees no video."""

    sees_video = False
    hears_ahead = True

    def __init__(self, url: str, listener, model: str = "default", api_key: str | None = None,
                 system_prompt: str = SYSTEM_PROMPT, timeout_s: float = 30.0):
        # Checked here, when the server starts, not at the first turn.
        try:
            import aiohttp
        except ImportError as e:
            raise ValueError(f"--thinker openai needs aiohttp (pip install aiohttp): {e}") from None
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"--thinker-url must be an http(s) URL of an OpenAI-compatible /v1 endpoint, got {url!r}")
        self._aiohttp = aiohttp
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.listener, self.model, self.api_key = listener, model, api_key
        self.system_prompt, self.timeout_s = system_prompt, timeout_s

    def warmup(self) -> None:
        self.listener.warmup()  # the endpoint is not asked: it may not be up yet

    def hear(self, codes, video=None, pcm=None) -> Heard:
        # The endpoint gets the transcript only (the video shapes nothing here).
        heard = self.listener.hear(codes, None, pcm) if pcm is not None else self.listener.hear(codes)
        self.listener.transcript(heard)
        return heard

    def start_hearing(self) -> Heard:
        return self.listener.start_hearing()

    def frames_short_of_a_position(self, heard: Heard, new: int) -> bool:
        return self.listener.frames_short_of_a_position(heard, new)

    def hear_more(self, heard: Heard, codes, pcm=None) -> Heard:
        return self.listener.hear_more(heard, codes, pcm)

    def finish_hearing(self, heard: Heard, codes, pcm=None) -> Heard:
        heard = self.listener.finish_hearing(heard, codes, pcm)
        self.listener.transcript(heard)  # what the endpoint is asked about
        return heard

    def transcript(self, heard: Heard) -> str:
        return self.listener.transcript(heard)

    def committed_text(self, heard: Heard) -> str:
        return self.listener.committed_text(heard)

    async def reply(self, heard: Heard, history: deque[dict] | None = None) -> AsyncIterator[tuple[str, None]]:
        """The endpoint's answer to the heard turn, word by word; `history`: this conversation's earlier messages
        (read as context, extended with this exchange once it is whole), or None for a turn alone."""
        aiohttp = self._aiohttp
        question = self.transcript(heard)
        messages = [{"role": "system", "content": self.system_prompt}, *(history or ()),
                    {"role": "user", "content": question}]
        body = {"model": self.model, "messages": messages, "stream": True}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        answer, pending = [], ""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
                async with http.post(self.url, json=body, headers=headers) as resp:
                    if resp.status != 200:
                        detail = (await resp.text())[:200]
                        raise ThinkerEndpointError(f"{self.url} answered HTTP {resp.status}: {detail}")
                    async for raw in resp.content:
                        line = raw.decode("utf-8", "replace").strip()
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            delta = json.loads(data)["choices"][0].get("delta", {}).get("content") or ""
                        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                            bad = f"{self.url} sent a malformed stream event: {data[:120]}"
                            raise ThinkerEndpointError(bad) from None
                        if delta:
                            answer.append(delta)
                            pending += delta
                            # Whole words only: "1" "7" split across events must still read "seventeen".
                            cut = max(pending.rfind(" "), pending.rfind("\n"))
                            if cut >= 0 and (words := tx.normalize(pending[:cut])):
                                yield words + " ", None
                            if cut >= 0:
                                pending = pending[cut + 1 :]
        except (TimeoutError, aiohttp.ClientError) as e:
            raise ThinkerEndpointError(f"{self.url} unreachable: {type(e).__name__} {e}") from None
        if words := tx.normalize(pending):
            yield words, None
        if history is not None:
            history.extend([{"role": "user", "content": question}, {"role": "assistant", "content": "".join(answer)}])
