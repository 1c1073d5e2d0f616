// talkstream's browser page: microphone -> server (WebRTC or WebSocket) -> speaker, with levels, events, latency;
// over WebRTC, optionally the camera: in codec echo -> the video codec -> back ("what the codec sees"), in chat
// -> the Thinker, which sees the frames of each turn.
// Plain JavaScript, no build step. Test hooks live on window.talkstreamStats (tests/web drive this page).
"use strict";

const $ = (id) => document.getElementById(id);
const SILENCE = 0.001; // RMS below this (-60 dBFS) does not count as audio coming back
const HEADER_BYTES = 12; // docs/protocol.md: kind, version, codebooks, flags, seq, timestamp

const stats = {
  state: "idle", // idle | connecting | connected | closed | failed
  stateReason: "", // why it closed or failed, as the page shows it
  transport: null,
  mode: null, // codec | chat
  latencyKind: null, // what the headline figure is: "round_trip" (codec echo) or "reply" (chat)
  receivedSeconds: 0, // seconds of audible audio that came back
  receivedLevel: 0, // loudest RMS of the audio that came back
  latencyEvents: 0, // latency measurements shown (WebRTC: server `latency` events; WS: per-second echo figures)
  lastLatencyMs: null, // the headline figure shown (see latencyKind)
  events: [], // every JSON event received, in order
  errors: [], // error events and failures
  camera: false, // the camera is being sent (WebRTC: codec echo shows it back, chat gives it to the Thinker)
  videoFramesSent: 0, // camera frames the browser sent (getStats)
  videoFramesReceived: 0, // frames of the codec's reconstruction decoded here (getStats)
  videoSize: null, // "WxH" of the returned video
};
window.talkstreamStats = stats;

let config = { ws_port: 8765, ice_servers: [], num_codebooks: 8, kbps_per_codebook: 0.75 };
let session = null;

const HINTS = {
  connecting: "Connecting…",
  codec: "Speak: you hear yourself through the codec.",
  chat: "Speak, then pause: the model answers after about half a second of silence.",
};

function setState(state, reason = "") {
  stats.state = state;
  stats.stateReason = reason;
  $("state").textContent = reason ? `${state}: ${reason}` : state;
  $("state").classList.toggle("failed", state === "failed");
  const live = state === "connecting" || state === "connected";
  $("connect").textContent = live ? "Disconnect" : "Connect";
  $("connect").classList.toggle("connected", live);
  for (const id of ["transport", "mode", "codebooks", "camera", "token"]) $(id).disabled = live;
  const hint = state === "connected" ? HINTS[stats.mode] : HINTS[state];
  const idle = stats.tokenRefused ? "Enter the server's token, then press Connect." : "Press Connect and speak.";
  $("hint").textContent = hint || idle;
}

function log(text, cls) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  if (cls) line.className = cls;
  const el = $("log");
  el.appendChild(line);
  while (el.childNodes.length > 300) el.removeChild(el.firstChild);
  el.scrollTop = el.scrollHeight;
}

function transcript(text) {
  const el = $("transcript");
  el.textContent += text + "\n";
  el.scrollTop = el.scrollHeight;
}

function rms(samples) {
  let s = 0;
  for (let i = 0; i < samples.length; i++) s += samples[i] * samples[i];
  return Math.sqrt(s / Math.max(samples.length, 1));
}

function noteReceived(seconds, level) {
  if (level > SILENCE) stats.receivedSeconds += seconds;
  stats.receivedLevel = Math.max(stats.receivedLevel, level);
  $("received").textContent = `${stats.receivedSeconds.toFixed(1)} s (peak level ${stats.receivedLevel.toFixed(3)})`;
}

function showLatency(kind, ms, detail) {
  if (kind !== stats.latencyKind) return; // only the figure this mode's headline is about
  stats.latencyEvents += 1;
  stats.lastLatencyMs = ms;
  $("latency").textContent = `${Math.round(ms)} ms`;
  $("latency-detail").textContent = detail || "";
}

// Events of docs/protocol.md, from the data channel or the WebSocket.
function onEvent(ev) {
  stats.events.push(ev);
  if (stats.events.length > 2000) stats.events.shift();
  switch (ev.type) {
    case "error":
      stats.errors.push(ev);
      log(`error ${ev.code}: ${ev.message}`, "error");
      if (ev.code === "unauthorized") askToken();
      if (ev.fatal) stop("failed", `${ev.code}: ${ev.message}`);
      break;
    case "vad":
      log(`vad ${ev.state} at ${ev.t} s`);
      if (ev.state === "end") transcript("· end of turn");
      break;
    case "transcript": // chat: what the model heard
      if (ev.final !== false) transcript(`you: ${ev.text}`);
      break;
    case "reply_text": // chat: what it answers
      if (ev.final) transcript(`talkstream: ${ev.text}`);
      break;
    case "turn": // chat: a pause the end-of-turn head judged mid-sentence; the turn stays open
      log(`turn ${ev.state} at ${ev.t} s (P complete ${ev.p_complete})`);
      if (ev.state === "held") transcript("· pause: turn held open (sounds unfinished)");
      break;
    case "barge_in": // chat: speech over the reply, judged a backchannel (the reply goes on) or an interruption
      log(`barge-in: ${ev.kind} (P backchannel ${ev.p_backchannel})`);
      transcript(ev.kind === "backchannel" ? "· backchannel: the reply goes on" : "· interruption: the reply stops");
      break;
    case "reply":
      log(`reply ${ev.state}${ev.frames ? ` (${ev.frames} frames)` : ""}`);
      transcript(`· reply ${ev.state}`);
      break;
    case "latency":
      if (typeof ev.first_packet_ms === "number") {
        log(`reply's first audio ${Math.round(ev.first_packet_ms)} ms after the turn`);
        showLatency("reply", ev.first_packet_ms, "(as the server measured it)");
      }
      // WebRTC, every second: the server's share; the page adds the network and its playout buffer.
      if (typeof ev.server_ms_p50 === "number" && session && session.onLatency) session.onLatency(ev);
      break;
    case "pong":
      if (session && session.onPong) session.onPong(ev);
      break;
    case "stats":
      log(`stats in ${ev.frames_in} out ${ev.frames_out} drops ${ev.drops} server p95 ${ev.latency_ms_p95} ms`);
      if (ev.video) {
        const v = ev.video;
        $("video-detail").textContent =
          `(${stats.videoSize || "…"}; codec ${v.codec_ms_p50} ms a frame, ${v.frames_out}/${v.frames_in} frames, ` +
          `${v.drops + v.dropped_out} dropped)`;
      }
      break;
    default:
      log(`${ev.type} ${JSON.stringify(ev).slice(0, 160)}`);
  }
}

function token() {
  return config.token_required ? $("token").value : undefined;
}

// The server refused the token: show the field again, emptied, to type it anew (nothing is kept until reload).
function askToken() {
  stats.tokenRefused = true;
  config.token_required = true;
  $("token-box").hidden = false;
  $("token").value = "";
}

async function openMic(camera = false) {
  return navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    // The codec codes 128x128 at 25 fps: ask for about that (the browser crops and scales), not a camera's 720p.
    video: camera ? { width: { ideal: 128 }, height: { ideal: 128 }, frameRate: { ideal: 25, max: 25 } } : false,
  });
}

function showVideos(local) {
  $("videos").hidden = !local;
  $("local-video").srcObject = local;
  if (!local) $("codec-video").srcObject = null;
}

// A level meter for any MediaStream, polled on a timer (works in background tabs and headless browsers).
class Meter {
  constructor(ctx, stream, el) {
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.buf = new Float32Array(this.analyser.fftSize);
    this.source = ctx.createMediaStreamSource(stream);
    this.source.connect(this.analyser);
    this.el = el;
  }
  read() {
    this.analyser.getFloatTimeDomainData(this.buf);
    const level = rms(this.buf);
    this.el.value = Math.min(1, level * 4);
    return level;
  }
  close() {
    this.source.disconnect();
  }
}

class RtcSession {
  async start(mode, codebooks, camera) {
    if (camera && mode === "chat") log("camera: the Thinker sees it while you speak (nothing comes back)");
    stats.camera = camera;
    this.pc = new RTCPeerConnection({ iceServers: config.ice_servers });
    this.mic = await openMic(stats.camera);
    for (const track of this.mic.getTracks()) this.pc.addTrack(track, this.mic);
    if (stats.camera) showVideos(new MediaStream(this.mic.getVideoTracks()));
    this.ctx = new AudioContext();
    this.micMeter = new Meter(this.ctx, this.mic, $("mic-level"));
    this.channel = this.pc.createDataChannel("events");
    this.channel.onmessage = (e) => typeof e.data === "string" && onEvent(JSON.parse(e.data));
    this.channel.onclose = () => session === this && stop("closed", "the server ended the session");
    this.pc.ontrack = (e) => {
      if (e.track.kind === "video") {
        $("codec-video").srcObject = new MediaStream([e.track]);
        return;
      }
      const stream = e.streams[0] || new MediaStream([e.track]);
      $("remote").srcObject = stream; // Chromium plays remote audio into WebAudio only while an element plays it
      $("remote").play().catch((err) => log(`autoplay refused: ${err}`, "error"));
      this.outMeter = new Meter(this.ctx, stream, $("out-level"));
    };
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState;
      log(`peer connection ${s}`);
      if (s === "connected") setState("connected");
      if (s === "failed") stop("failed", "the connection was lost");
      if (s === "closed") stop("closed");
    };
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await this.gathered(2000);
    const resp = await fetch("offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: this.pc.localDescription.sdp, type: "offer", mode, codebooks, token: token() }),
    });
    const answer = await resp.json();
    if (!resp.ok) {
      if (answer.code === "unauthorized") askToken();
      throw new Error(`${answer.code}: ${answer.message}`);
    }
    this.session = answer.session;
    log(`session ${answer.session}`);
    await this.pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    this.server = null;
    this.rttMs = null;
    this.last = null;
    this.timers = [
      setInterval(() => this.poll(), 200),
      setInterval(() => {
        if (this.channel.readyState === "open") this.channel.send(JSON.stringify({ type: "ping", t: performance.now() }));
      }, 1000),
    ];
  }

  gathered(timeoutMs) {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => this.pc.iceGatheringState === "complete" && resolve();
      this.pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, timeoutMs); // host candidates come at once; do not wait on a slow STUN server
    });
  }

  onPong(ev) {
    if (typeof ev.t === "number") this.rttMs = performance.now() - ev.t;
  }

  onLatency(ev) {
    this.server = ev;
    // Round trip = the network both ways (data-channel ping) + the server (input arrival -> echo leaving its
    // track) + this browser's playout buffer (getStats). The server's receive side holds one 20 ms packet.
    const net = this.rttMs ?? 0;
    const playout = this.playoutMs ?? 0;
    const total = net + ev.server_ms_p50 + playout + 20;
    showLatency(
      "round_trip",
      total,
      `(network ${net.toFixed(0)} + server ${ev.server_ms_p50.toFixed(0)} + playout ${playout.toFixed(0)} + 20 ms)`,
    );
  }

  async poll() {
    if (this.micMeter) this.micMeter.read();
    if (this.outMeter) this.outMeter.read();
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.kind === "video") {
        if (s.type === "outbound-rtp") stats.videoFramesSent = s.framesSent || 0;
        if (s.type === "inbound-rtp") {
          stats.videoFramesReceived = s.framesDecoded || 0;
          if (s.frameWidth) stats.videoSize = `${s.frameWidth}x${s.frameHeight}`;
        }
        return;
      }
      if (s.type !== "inbound-rtp" || s.kind !== "audio") return;
      if (s.jitterBufferEmittedCount) this.playoutMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
      if (s.totalSamplesDuration === undefined || s.totalAudioEnergy === undefined) return;
      const now = { dur: s.totalSamplesDuration, energy: s.totalAudioEnergy };
      if (this.last) {
        const dd = now.dur - this.last.dur;
        if (dd > 0) noteReceived(dd, Math.sqrt(Math.max(0, now.energy - this.last.energy) / dd));
      }
      this.last = now;
    });
  }

  stop() {
    for (const t of this.timers || []) clearInterval(t);
    if (this.pc) this.pc.close();
    if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close();
    $("remote").srcObject = null;
    showVideos(null);
  }
}

class WsSession {
  async start(mode, codebooks, camera) {
    if (camera) log("camera: the page sends it over WebRTC only; not sent");
    this.ctx = new AudioContext();
    if (this.ctx.sampleRate > 48000) {
      await this.ctx.close();
      this.ctx = new AudioContext({ sampleRate: 48000 }); // the protocol takes 8..48 kHz
    }
    const rate = this.ctx.sampleRate;
    this.frameSamples = Math.round(rate * 0.02);
    this.pending = new Float32Array(this.frameSamples);
    this.filled = 0;
    this.seq = 0;
    this.playAt = 0;
    this.rtts = [];
    this.ready = false;
    this.mic = await openMic();
    this.micMeter = new Meter(this.ctx, this.mic, $("mic-level"));
    this.outAnalyser = this.ctx.createAnalyser();
    this.outAnalyser.connect(this.ctx.destination);
    await this.ctx.audioWorklet.addModule("static/mic-worklet.js");
    this.capture = new AudioWorkletNode(this.ctx, "pcm-capture");
    this.capture.port.onmessage = (e) => this.onMic(e.data);
    this.micMeter.source.connect(this.capture);
    const mute = this.ctx.createGain(); // the worklet must be pulled by the graph, but not heard
    mute.gain.value = 0;
    this.capture.connect(mute).connect(this.ctx.destination);

    this.ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${config.ws_port}`);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      // echo_cancelled: the microphone is opened with echoCancellation on, so the server need not cancel it
      const hello = { type: "hello", version: 1, mode, codebooks, sample_rate: rate, output: ["pcm"], token: token(),
                      echo_cancelled: true };
      this.ws.send(JSON.stringify(hello));
    };
    this.ws.onmessage = (e) => (typeof e.data === "string" ? this.onText(e.data) : this.onAudio(e.data));
    this.ws.onclose = (e) =>
      stop(e.wasClean ? "closed" : "failed", e.reason || (e.wasClean ? "the server ended the session" : `connection lost (${e.code})`));
    this.ws.onerror = () => log("WebSocket error", "error");
    this.timers = [
      setInterval(() => {
        this.micMeter.read();
        if (this.rtts.length) {
          const sorted = this.rtts.slice().sort((a, b) => a - b);
          const detail = `(median of ${sorted.length} echoed frames, playout queue included)`;
          showLatency("round_trip", sorted[Math.floor(sorted.length / 2)], detail);
          this.rtts = [];
        }
      }, 1000),
      setInterval(() => this.micMeter.read(), 100),
    ];
  }

  onText(text) {
    const ev = JSON.parse(text);
    if (ev.type === "ready") {
      this.ready = true;
      setState("connected");
      log(`session ${ev.session} ready: ${ev.mode}, ${ev.codebooks} codebooks, ${ev.sample_rate} Hz`);
      return;
    }
    onEvent(ev);
  }

  onMic(block) {
    if (!this.ready || this.ws.readyState !== WebSocket.OPEN) return;
    let i = 0;
    while (i < block.length) {
      const n = Math.min(block.length - i, this.frameSamples - this.filled);
      this.pending.set(block.subarray(i, i + n), this.filled);
      this.filled += n;
      i += n;
      if (this.filled === this.frameSamples) {
        this.sendFrame(this.pending);
        this.filled = 0;
      }
    }
  }

  sendFrame(samples) {
    const buf = new ArrayBuffer(HEADER_BYTES + 2 * samples.length);
    const view = new DataView(buf);
    view.setUint8(0, 1); // PCM16
    view.setUint8(1, 1); // version
    view.setUint32(4, this.seq++ >>> 0, true);
    view.setUint32(8, Math.round(performance.now()) >>> 0, true);
    const pcm = new Int16Array(buf, HEADER_BYTES);
    for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
    this.ws.send(buf);
  }

  onAudio(buf) {
    const view = new DataView(buf);
    if (buf.byteLength < HEADER_BYTES || view.getUint8(0) !== 1) return;
    const sent = view.getUint32(8, true); // 0: no input timestamp (chat replies)
    const pcm = new Int16Array(buf.slice(HEADER_BYTES));
    if (!pcm.length) return;
    const x = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) x[i] = pcm[i] / 32768;
    const rate = this.ctx.sampleRate;
    noteReceived(x.length / rate, rms(x));
    $("out-level").value = Math.min(1, rms(x) * 4);
    const audio = this.ctx.createBuffer(1, x.length, rate);
    audio.copyToChannel(x, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = audio;
    src.connect(this.outAnalyser);
    const now = this.ctx.currentTime;
    if (this.playAt < now + 0.01) this.playAt = now + 0.04; // (re)start with a 40 ms cushion after an underrun
    // Round trip: sent -> back here, plus the wait in the playout queue before it is heard.
    if (sent) this.rtts.push((((Math.round(performance.now()) >>> 0) - sent) >>> 0) + 1000 * (this.playAt - now));
    src.start(this.playAt);
    this.playAt += audio.duration;
  }

  stop() {
    for (const t of this.timers || []) clearInterval(t);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      this.ws.onclose = null;
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
      this.ws.close();
    }
    if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close();
  }
}

async function start() {
  const transport = $("transport").value;
  stats.transport = transport;
  stats.receivedSeconds = 0;
  stats.receivedLevel = 0;
  stats.camera = false;
  stats.videoFramesSent = stats.videoFramesReceived = 0;
  stats.videoSize = null;
  stats.mode = $("mode").value;
  stats.latencyKind = stats.mode === "chat" ? "reply" : "round_trip";
  stats.lastLatencyMs = null;
  stats.tokenRefused = false;
  $("latency-label").textContent =
    stats.mode === "chat" ? "Reply latency (end of your turn to its first audio)" : "Round trip (live)";
  $("latency").textContent = "–";
  $("latency-detail").textContent = "";
  setState("connecting");
  session = transport === "ws" ? new WsSession() : new RtcSession();
  try {
    await session.start($("mode").value, Number($("codebooks").value), $("camera").checked);
    log(`${transport} session started`);
  } catch (err) {
    stats.errors.push({ type: "error", code: "client", message: String(err) });
    log(`could not connect: ${err.message || err}`, "error");
    stop("failed", err.message || String(err));
  }
}

function stop(state = "closed", reason = "") {
  if (!session && (stats.state === "closed" || stats.state === "failed")) return; // already ended: keep its reason
  if (session) {
    const s = session;
    session = null;
    s.stop();
  }
  setState(state, reason);
}

async function init() {
  try {
    config = await (await fetch("config")).json();
  } catch (err) {
    log(`no /config (${err}); using defaults`, "error");
  }
  const select = $("codebooks");
  for (let k = config.num_codebooks; k >= 1; k--) {
    const opt = new Option(`${(k * config.kbps_per_codebook).toFixed(2)} kbps (${k} codebooks)`, String(k));
    select.appendChild(opt);
  }
  $("token-box").hidden = !config.token_required;
  $("connect").addEventListener("click", () => (session ? stop() : start()));
  window.addEventListener("pagehide", () => stop()); // the tab closes or navigates: tell the server now
  setState("idle");
}

init();
