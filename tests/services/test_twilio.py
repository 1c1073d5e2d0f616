"""Phone calls (talkstream/protocol/telephony.py, talkstream/services/telephony.py).

Fast, no models: the media stream's events fed as text with no socket, G.711 levels, the webhook's signature and
TwiML. Slow: a real server on loopback answering a scripted platform client (a call with spoken questions, barge-in,
DTMF), with the shipped models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from talkstream.bench.phone import PhoneCaller, to_line
from talkstream.protocol.telephony import (
    FRAME_SAMPLES,
    RATE,
    Audio,
    CallEnd,
    CallStart,
    CallState,
    Keys,
    MarkPlayed,
    MediaStream,
    StreamError,
    signature,
    twiml,
    valid_signature,
)

SID = "MZ0123456789abcdef0123456789abcdef"


def start_msg(encoding="audio/x-mulaw", rate=8000, channels=1, params=None) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": SID,
        "start": {"accountSid": "AC1", "streamSid": SID, "callSid": "CA1", "tracks": ["inbound"],
                  "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": channels},
                  "customParameters": params or {}},
    })


def media_msg(payload: bytes, ts: int = 0, track: str = "inbound") -> str:
    return json.dumps({"event": "media", "streamSid": SID,
                       "media": {"track": track, "chunk": "1", "timestamp": str(ts),
                                 "payload": base64.b64encode(payload).decode()}})


def tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def started() -> MediaStream:
    s = MediaStream()
    s.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    [e] = s.receive(start_msg(params={"token": "t0k"}))
    assert isinstance(e, CallStart)
    return s


# -- the media stream, sans-I/O ----------------------------------------------------------------------------------------
def test_start_media_dtmf_mark_stop():
    s = MediaStream()
    assert s.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})) == []
    [start] = s.receive(start_msg(params={"token": "t0k", "mode": "chat"}))
    assert start == CallStart(SID, "CA1", {"token": "t0k", "mode": "chat"}, "ulaw", "twilio")
    assert s.state is CallState.STREAMING
    x = tone(0.02)
    [audio] = s.receive(media_msg(s.encode(x), ts=40))
    assert isinstance(audio, Audio) and audio.timestamp == 40 and audio.pcm.dtype == np.float32
    assert audio.pcm.size == FRAME_SAMPLES
    assert s.receive(media_msg(s.encode(x), track="outbound")) == []  # our own audio echoed: not the caller
    assert s.receive(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track",
                                                                             "digit": "7"}})) == [Keys("7")]
    name, text = s.mark()
    assert json.loads(text) == {"event": "mark", "streamSid": SID, "mark": {"name": name}}
    assert s.receive(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})) == [MarkPlayed(name)]
    assert s.pending_marks == []
    assert s.receive(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}})) == [CallEnd("stop")]
    assert s.state is CallState.ENDED and s.receive(media_msg(b"\xff" * 160)) == []


def test_outgoing_messages_carry_the_stream_sid():
    s = started()
    msg = json.loads(s.media(b"\xff" * 160))
    assert msg == {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    assert json.loads(s.clear()) == {"event": "clear", "streamSid": SID}
    n1, _ = s.mark()
    n2, _ = s.mark()
    assert n1 != n2 and s.pending_marks == [n1, n2]
    assert s.receive(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": n2}})) == [MarkPlayed(n2)]
    assert s.pending_marks == []  # marks play in order: the second one's coming back means the first played too


@pytest.mark.parametrize(
    "text, code",
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        (json.dumps({"event": 5}), "bad_json"),
        (json.dumps({"event": "hangup"}), "unknown_event"),
        (json.dumps({"event": "media", "streamSid": SID}), "bad_event"),
        (json.dumps({"event": "media", "media": {"payload": "%%%not base64"}}), "bad_media"),
        (json.dumps({"event": "media", "media": {"payload": ""}}), "bad_media"),
        (json.dumps({"event": "media", "media": {"payload": "/w==", "timestamp": "soon"}}), "bad_media"),
        (json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}), "bad_event"),
        (json.dumps({"event": "mark", "mark": {"name": "never-sent"}}), "bad_event"),
        (start_msg(), "bad_event"),  # a second start
        ("x" * 70_000, "too_large"),
    ],
    ids=["not-json", "not-object", "event-not-string", "unknown-event", "media-without-body", "bad-base64",
         "empty-payload", "bad-timestamp", "bad-digit", "unknown-mark", "second-start", "too-large"],
)
def test_a_malformed_event_is_an_error_and_the_call_goes_on(text, code):
    s = started()
    [e] = s.receive(text)
    assert isinstance(e, StreamError) and e.code == code and not e.fatal and e.message
    assert s.state is CallState.STREAMING
    [audio] = s.receive(media_msg(s.encode(tone(0.02))))  # the next good event is taken
    assert isinstance(audio, Audio)


def test_media_before_start_is_dropped_with_an_error():
    s = MediaStream()
    [e] = s.receive(media_msg(b"\xff" * 160))
    assert e.code == "not_started" and s.state is CallState.CONNECTING
    assert isinstance(s.receive(start_msg())[0], CallStart)


@pytest.mark.parametrize("encoding, rate, channels", [("audio/l16", 8000, 1), ("audio/x-mulaw", 16000, 1),
                                                      ("audio/x-mulaw", 8000, 2)], ids=["l16", "16k", "stereo"])
def test_a_media_format_we_cannot_speak_ends_the_call_cleanly(encoding, rate, channels):
    s = MediaStream()
    err, end = s.receive(start_msg(encoding, rate, channels))
    assert isinstance(err, StreamError) and err.fatal and err.code == "bad_media_format" and "8000" in err.message
    assert end == CallEnd("bad_media_format") and s.state is CallState.ENDED
    assert s.receive(media_msg(b"\xff" * 160)) == []


def test_telnyx_dialect_snake_case_fields_and_pcma():
    s = MediaStream()
    [start] = s.receive(json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": "st-1",
        "start": {"call_control_id": "v3:abc", "client_state": "aGk=",
                  "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}},
    }))
    assert start == CallStart("st-1", "v3:abc", {"client_state": "aGk="}, "alaw", "telnyx")
    x = tone(0.1)
    [audio] = s.receive(json.dumps({"event": "media", "stream_id": "st-1",
                                    "media": {"track": "inbound", "timestamp": "20",
                                              "payload": base64.b64encode(s.encode(x)).decode()}}))
    assert np.abs(audio.pcm - x).max() < 0.02  # A-law, not mu-law: decoded with the stream's own law
    assert json.loads(s.clear()) == {"event": "clear", "stream_id": "st-1"}
    assert s.receive(json.dumps({"event": "dtmf", "stream_id": "st-1", "dtmf": {"digit": "#"}})) == [Keys("#")]


@pytest.mark.parametrize("level", [0.01, 0.1, 0.5, 0.9], ids=lambda v: f"level{v}")
def test_mulaw_round_trip_keeps_level_and_shape(level):
    s = started()
    x = tone(0.5, level=level)
    g711 = s.encode(x)
    assert len(g711) == x.size  # one byte a sample: 160 per 20 ms
    y = s.decode(g711)
    rms = lambda v: float(np.sqrt(np.mean(v.astype(np.float64) ** 2)))  # noqa: E731
    assert abs(20 * np.log10(rms(y) / rms(x))) < 0.2  # level within 0.2 dB
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - y).astype(np.float64) ** 2))
    assert snr > 30  # G.711's ~38 dB for a sine well above its floor
    assert s.encode(np.full(160, 2.0, np.float32)) == s.encode(np.full(160, 32767 / 32768, np.float32))  # clipped
    assert set(s.decode(s.silence(160))) == {0.0}


# -- the webhook ---------------------------------------------------------------------------------------------------
def test_signature_matches_twilios_documented_example():
    # Twilio's "Validating requests" example: token 12345, this URL and these form fields.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
              "To": "+18005551212"}
    assert signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert valid_signature("12345", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not valid_signature("12345", url, params, None)
    assert not valid_signature("12345", url, params, "")
    assert not valid_signature("54321", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not valid_signature("12345", url, {**params, "Digits": "1235"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not valid_signature("12345", url.replace("https", "http"), params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


def test_twiml_connects_the_call_to_the_stream():
    root = ET.fromstring(twiml("wss://abc.example.org/twilio"))
    assert root.tag == "Response" and [c.tag for c in root] == ["Connect"]
    [stream] = list(root[0])
    assert stream.tag == "Stream" and stream.attrib == {"url": "wss://abc.example.org/twilio"} and not list(stream)
    root = ET.fromstring(twiml("wss://h/twilio", {"token": 'a"<&>b'}))
    [param] = list(root[0][0])
    assert param.tag == "Parameter" and param.attrib == {"name": "token", "value": 'a"<&>b'}  # escaped, read back


# -- the webhook over HTTP (no models: the HTTP app alone) ---------------------------------------------------------
def test_voice_webhook_answers_with_twiml_and_refuses_a_bad_signature():
    from types import SimpleNamespace

    from talkstream.services.app import ServerConfig
    from talkstream.services.http import HttpService
    from talkstream.services.session import Limits
    from talkstream.streaming.metrics import Metrics

    cfg = ServerConfig(http_port=0, public_host="calls.example.org", twilio_auth_token="s3cret",
                       limits=Limits(token="tk"))

    async def main():
        http = HttpService(SimpleNamespace(config=cfg, metrics=Metrics()))
        await http.start()
        try:
            url = f"{http.url}/twilio/voice?x=1"
            form = {"CallSid": "CA9", "From": "+15550001111", "To": "+15550002222"}

            def post(sig: str | None, body: dict = form):
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                if sig is not None:
                    headers["X-Twilio-Signature"] = sig
                req = urllib.request.Request(url, urllib.parse.urlencode(body).encode(), headers, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return r.status, r.headers["Content-Type"], r.read().decode()
                except urllib.error.HTTPError as e:
                    return e.code, e.headers["Content-Type"], e.read().decode()

            good = signature("s3cret", url, form)
            return await asyncio.gather(*(asyncio.to_thread(post, *a) for a in [
                (good,), (None,), ("bm9wZQ==",), (good, {**form, "To": "+15550003333"}),
            ]))
        finally:
            await http.stop()

    (ok, ctype, body), missing, wrong, tampered = asyncio.run(main())
    assert ok == 200 and ctype.startswith("text/xml")
    stream = ET.fromstring(body)[0][0]
    assert stream.attrib["url"] == "wss://calls.example.org/twilio"
    assert [(p.attrib["name"], p.attrib["value"]) for p in stream] == [("token", "tk")]  # the stream may open a session
    for status, _, text in (missing, wrong, tampered):
        assert status == 403 and json.loads(text)["code"] == "bad_signature"


# -- a scripted platform (bench.phone.PhoneCaller) on loopback; slow: the shipped codec, VAD, Thinker-Talker ----
def spoken(text: str, voice: str = "en-us+m1") -> np.ndarray:
    """`text` said by an espeak-ng voice, as a phone line carries it: 8 kHz (G.711 is applied on the way)."""
    from talkstream.data.voices import Voice, synthesize

    return to_line(synthesize(Voice("espeak", voice), text))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


@pytest.fixture(scope="module")
def models():
    from talkstream.checkpoint import load_audio_codec
    from talkstream.streaming.vad import SileroVAD

    return load_audio_codec(), SileroVAD()


def serving(models, responder=None, **kw):
    from talkstream.services.app import ServerConfig, TalkstreamServer

    codec, vad = models
    kw.setdefault("thinker", "echo")
    return TalkstreamServer(ServerConfig(port=0, **kw), codec=codec, vad=vad, responder=responder)


@pytest.mark.slow
def test_a_call_is_answered_paced_marked_and_a_barge_in_clears_it(models):
    """The echo answerer says each turn back: its reply is as long as the turn, so speaking again while it plays is a
    barge-in. Malformed events in the middle do not end the call."""
    first = spoken("the quick brown fox jumps over the lazy dog and runs into the forest far away")
    second = spoken("stop please")
    # The second turn begins about 2.3 s into the reply: a line's first reply is echo-cancelled (phone lines may
    # carry echo) until 1.7 s of it show the line has none; before that, AEC3 takes speech for echo (docs/turns.md).
    script = np.concatenate([silence(0.5), first, silence(3.0), second, silence(0.3)])
    barge_at = (0.5 + first.size / RATE + 3.0)

    async def main():
        async with serving(models) as srv:
            p = await PhoneCaller(f"{srv.url}/twilio").call(script, tail_s=5.0, extra={
                0.3: "not json", 0.4: json.dumps({"event": "hangup"}),
                0.45: json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}})})
            await asyncio.sleep(0.2)
            [call] = srv.telephony.ended
            return p, call, len(srv.sessions), srv.render_metrics().decode()

    p, call, live, metrics = asyncio.run(asyncio.wait_for(main(), 180))
    assert live == 0  # the call's session is gone after stop
    kinds = [(e["type"], e.get("state")) for e in call.events]
    assert ("reply", "start") in kinds and ("reply", "interrupted") in kinds, kinds
    assert 'code="bad_json"' in metrics and 'code="unknown_event"' in metrics  # counted, and the call went on
    # The reply came as 20 ms media messages, paced: it arrived over about as long as it plays.
    assert p.received and {len(d) for _, d in p.received} == {FRAME_SAMPLES}
    first_reply = [t for t, _ in p.received if t < barge_at + 0.3]
    assert len(first_reply) > 25
    span = first_reply[-1] - first_reply[0]
    assert span >= 0.8 * (len(first_reply) - 1) * 0.02, (span, len(first_reply))
    # Barge-in: the second turn began while the first reply played: `clear`, and the reply stopped coming.
    assert p.clears and barge_at < p.clears[0] < barge_at + 1.5, (p.clears, barge_at)
    # A mark follows a reply that played to its end (the second one) and came back once played.
    assert p.marks and set(call.played) >= {p.marks[-1][1]}
    reply = p.reply_pcm()
    assert np.sqrt(np.mean(reply**2)) > 0.005  # the echo of speech, not silence


@pytest.mark.slow
def test_telnyx_stream_in_codec_mode_hears_itself_through_the_codec(models):
    """Telnyx's field names on /telnyx, and the `mode: codec` parameter: the caller's audio comes back through the
    codec, live (never paced, no marks), and the token the server wants is checked."""
    speech = spoken("hello there, this is a test of the phone line")
    script = np.concatenate([silence(0.3), speech, silence(0.3)])

    async def main():
        from talkstream.services.session import Limits

        async with serving(models, limits=Limits(token="tk")) as srv:
            p = await PhoneCaller(f"{srv.url}/telnyx?mode=codec&token=tk", telnyx=True).call(
                script, tail_s=1.0)
            refused = await PhoneCaller(f"{srv.url}/twilio", {"mode": "codec"}).call(silence(0.2), tail_s=0.2)
            return p, refused, len(srv.sessions), len(srv.telephony.ended)

    p, refused, live, ended = asyncio.run(asyncio.wait_for(main(), 180))
    assert live == 0 and ended == 1  # the call without the token never opened a session
    assert refused.received == [] and not p.marks and not p.clears
    assert len(p.received) > 0.8 * script.size / FRAME_SAMPLES  # about all of it came back
    # A neural codec keeps what is heard, not the waveform's phase: compare loudness envelopes, 20 ms frames placed
    # at the time they arrived (the line sends nothing while it has nothing).
    e_in = np.sqrt(np.mean(script[: script.size // 160 * 160].reshape(-1, 160) ** 2, 1))
    e_out = np.zeros(e_in.size + 100)
    for t, data in p.received:
        if round(t / 0.02) < e_out.size:
            e_out[round(t / 0.02)] = np.sqrt(np.mean(p.stream.decode(data) ** 2))
    r = [np.corrcoef(e_in, e_out[lag : lag + e_in.size])[0, 1] for lag in range(50)]  # up to a second late
    assert max(r) > 0.7, r  # the caller's own voice, through the codec


@pytest.mark.slow
def test_a_phone_call_with_the_builtin_answerer_questions_and_keys(models):
    """Spoken questions over an 8 kHz G.711 line are answered with media; a key pressed during a question joins its
    transcript; keys pressed in silence (ended by #) are a turn of their own."""
    q1 = spoken("what is seven plus five")
    q2 = spoken("what is two plus")
    t2 = 0.5 + q1.size / RATE + 5.0  # the second question starts once the first answer has played
    script = np.concatenate([silence(0.5), q1, silence(5.0), q2, silence(5.0)])
    keys = {t2 + 0.3: "3", t2 + q2.size / RATE + 5.0 - 1.0: "9", t2 + q2.size / RATE + 5.0 - 0.9: "#"}

    async def main():
        async with serving(models, thinker="builtin", backend="torch") as srv:
            p = await PhoneCaller(f"{srv.url}/twilio").call(script, keys=keys, tail_s=9.0)  # the last reply plays out
            await asyncio.sleep(0.2)
            [call] = srv.telephony.ended
            return p, call

    p, call = asyncio.run(asyncio.wait_for(main(), 480))
    transcripts = [e["text"] for e in call.events if e["type"] == "transcript" and e["final"]]
    replies = [e["text"].strip() for e in call.events if e["type"] == "reply_text" and e["final"]]
    assert len(replies) == 3, (transcripts, replies)
    assert replies[0] == "seven plus five is twelve.", (transcripts, replies)
    assert transcripts[1].endswith(" 3") and replies[1] == "two plus three is five.", (transcripts, replies)
    assert transcripts[2] == "9"  # the keys alone: the Thinker read them (and says what it can do)
    assert len(p.received) * 0.02 > 3.0 and len(p.marks) == 3  # three replies went down the line, each marked


@pytest.mark.parametrize("host", ["https://abc.example.org", "abc.example.org/twilio", ""], ids=["scheme", "path",
                                                                                              "empty"])
def test_a_public_host_that_is_not_a_host_is_a_one_line_error(host, capsys):
    from talkstream.cli import main

    assert main(["serve", "--public-host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error: --public-host") and "\n" not in err


# -- keys reach the Thinker as text (the chat seam, no models: a stand-in Thinker and the tiny Talker) -----------
class ReadingThinker:
    """Hears every turn whole as the words 'heard words' and answers with what it read; records each transcript."""

    sees_video = hears_ahead = False

    def __init__(self):
        self.read: list[str] = []

    def warmup(self) -> None:
        pass

    def start_hearing(self):
        from talkstream.chat.protocol import Heard

        return Heard(None)

    def frames_short_of_a_position(self, heard, new: int) -> bool:
        return True

    def hear_more(self, heard, codes, pcm=None):
        return heard

    def finish_hearing(self, heard, codes, pcm=None):
        return self.hear(codes, None, pcm)

    def hear(self, codes, video=None, pcm=None):
        from talkstream.chat.protocol import Heard

        return Heard(None, "heard words")

    def transcript(self, heard) -> str:
        return heard.transcript or ""

    def committed_text(self, heard) -> str:
        return ""

    async def reply(self, heard, history=None):
        self.read.append(heard.transcript)
        yield "seven.", None


def test_keys_join_the_next_turns_transcript_or_are_a_turn_of_their_own():
    import torch

    from talkstream.chat.responder import ChatResponder, Speaker
    from talkstream.models.turn import Turn
    from tests.models.tiny import tiny_talker

    thinker = ReadingThinker()
    chat = ChatResponder(thinker, Speaker(tiny_talker(), block_frames=4)).open_session()

    async def answer(codes):
        return [x for x in [item async for item in chat.respond(Turn(codes, None))] if isinstance(x, dict)]

    async def main():
        spoken = torch.zeros(1, 3, 10, dtype=torch.long)
        chat.type_text("3")
        with_keys = await answer(spoken)
        alone = await answer(spoken)  # the keys went with the turn they were typed for
        chat.type_text("42")
        keys_only = await answer(torch.zeros(1, 3, 0, dtype=torch.long))
        return with_keys, alone, keys_only

    with_keys, alone, keys_only = asyncio.run(main())
    assert thinker.read == ["heard words 3", "heard words", "42"]
    final = lambda events: [e["text"] for e in events if e["type"] == "transcript" and e["final"]]  # noqa: E731
    assert final(with_keys) == ["heard words 3"] and final(keys_only) == ["42"]


# -- the outbound line: 20 ms a message against the clock, a mark after a reply, clear at barge-in (no models) -------
def test_the_line_paces_marks_and_clears():
    from talkstream.services.telephony import LinePacer, PhoneLine

    async def main():
        s = started()
        sent: list[tuple[float, dict]] = []
        loop = asyncio.get_running_loop()

        async def send(text: str) -> None:
            sent.append((loop.time(), json.loads(text)))

        line = PhoneLine(s, send)
        pacer = LinePacer(line)
        task = asyncio.create_task(line.run())
        t0 = loop.time()
        reply = s.encode(tone(0.5))
        for i in range(0, len(reply), 400):  # a reply handed over in 50 ms chunks, as the session does
            await pacer.wait(0.05)
            line.push(reply[i : i + 400], paced=True)
            assert pacer.playhead is not None
        line.reply_ended()
        await asyncio.sleep(0.25)
        media = [(t, m) for t, m in sent if m["event"] == "media"]
        marks = [m for _, m in sent if m["event"] == "mark"]
        line.push(s.encode(tone(1.0)), paced=True)  # the next reply; the caller speaks over it
        await asyncio.sleep(0.1)
        pacer.reset()
        await asyncio.sleep(0.1)
        after = len([m for _, m in sent if m["event"] == "media"])
        await asyncio.sleep(0.1)
        task.cancel()
        return t0, media, marks, sent, after, line

    t0, media, marks, sent, after, line = asyncio.run(main())
    assert len(media) == 25 and all(len(base64.b64decode(m["media"]["payload"])) == 160 for _, m in media)
    span = media[-1][0] - media[0][0]
    assert 0.4 < span < 0.6, span  # 25 frames of 20 ms took about 0.48 s: real time, not a burst
    assert len(marks) == 1 and [m["event"] for _, m in sent][:26] == ["media"] * 25 + ["mark"]  # after the reply
    assert [m["event"] for _, m in sent].count("clear") == 1 and line.buffered_s == 0
    assert len([m for _, m in sent if m["event"] == "media"]) == after  # nothing after the clear


@pytest.mark.slow
def test_stopping_the_server_ends_a_live_call(models):
    async def main():
        srv = serving(models)
        await srv.start()
        caller = PhoneCaller(f"{srv.url}/twilio")
        call = asyncio.create_task(caller.call(spoken("hello there"), tail_s=30.0))
        while not srv.telephony.calls:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await asyncio.wait_for(srv.stop(), 20)
        await asyncio.wait_for(call, 15)  # the stream was closed under the caller: it stops sending
        return len(srv.sessions), len(srv.telephony.calls), len(srv.telephony.ended)

    assert asyncio.run(asyncio.wait_for(main(), 120)) == (0, 0, 1)
