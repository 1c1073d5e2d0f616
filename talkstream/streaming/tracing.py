"""Per-turn spans through OpenTelemetry, when the `otel` extra is installed (a no-op otherwise).

One span per chat turn, `talkstream.turn`, from the end of the user's turn until the reply is over for the user (the
next turn begins, a barge-in stops it, or the session closes), with events at what voice-agent users measure:
`end_of_turn`, `first_reply_text`, `first_audio`, `reply_end` (the answer is all written), `barge_in`, and `error`
(with the error code). Attributes: the session id, the turn's frames, and the first-audio latency in ms. Exporters
are the application's to configure (the SDK's TracerProvider); talkstream only creates spans.
"""

from __future__ import annotations

import time

try:  # the API alone makes no spans until an SDK provider is set; both come with the `otel` extra
    from opentelemetry import trace as _trace

    _OTEL = True
except ImportError:  # pragma: no cover - exercised where the extra is absent
    _OTEL = False


class TurnSpan:
    """The span of one turn (or nothing, without OpenTelemetry). Events are recorded once each."""

    def __init__(self, session_id: str, frames: int):
        self._span = None
        self._seen: set[str] = set()
        self._t0 = time.perf_counter()
        if _OTEL:
            tracer = _trace.get_tracer("talkstream")
            self._span = tracer.start_span("talkstream.turn", attributes={"talkstream.session": session_id,
                                                                         "talkstream.turn_frames": frames})
            self._span.add_event("end_of_turn")

    def event(self, name: str, **attributes) -> None:
        if self._span is None or name in self._seen or not self._span.is_recording():
            return
        self._seen.add(name)
        if name == "first_audio":
            ms = round(1000 * (time.perf_counter() - self._t0), 1)
            attributes["latency_ms"] = ms
            self._span.set_attribute("talkstream.first_audio_ms", ms)
        self._span.add_event(name, attributes=attributes)

    def end(self) -> None:
        if self._span is not None and self._span.is_recording():
            self._span.end()
