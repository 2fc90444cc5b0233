// A page-side client that speaks exactly the frames of @pinecall/web 0.3.17 and reacts to
// them as it does. The package is not on the npm registry this machine reaches, so this is a
// restatement of its wire behaviour, written for this test (not its code):
//   ChatSession  — pinecall/web src/chat/ChatSession.ts: GET {server}/chat/token?agent_id=
//     (or a tokenProvider), WS {server→ws}/chat/ws?token=; "connected" only on chat.connected;
//     an `error` event sets status "error" with its `error`; a close while not connected
//     changes nothing (the page stays "connecting"); a refused mint reads the body into
//     `Token: <status> <body>`.
//   VoiceSession — pinecall/web src/core/VoiceSession.ts: GET /webrtc/token, GET
//     {server}/webrtc/ice-servers, getUserMedia, a data channel labelled "events" that sends the
//     string "ping" every 1000 ms once open, non-trickle offer (waits up to 2 s for gathering),
//     POST {server}/webrtc/offer {sdp, type, token}; status "connected" on connectionState
//     "connected"; "disconnected"/"failed" → cleanup and "idle"; session.idle_warning →
//     idleWarning = remaining_seconds; session.timeout → disconnect at once; speech.started
//     clears idleWarning. It sets no onclose on the data channel and ignores call.ended.
// Every transition is noted in `client.log` with Date.now(), for the driver to read.
"use strict";

const client = { log: [], pings: 0 };
window.client = client;

function note(source, what, data) {
  client.log.push({ source, what, data: data === undefined ? null : data, at: Date.now() });
}

class Chat {
  constructor(opts) {
    this.opts = opts;
    this.status = "idle";
    this.error = null;
    this.ws = null;
  }

  set(patch) {
    Object.assign(this, patch);
    note(this.opts.name || "chat", "state", { status: this.status, error: this.error });
  }

  async connect() {
    this.set({ status: "connecting", error: null });
    try {
      const base = this.opts.server.replace(/\/$/, "");
      let minted;
      if (this.opts.tokenProvider) {
        minted = await this.opts.tokenProvider();
      } else {
        const response = await fetch(`${base}/chat/token?agent_id=${encodeURIComponent(this.opts.agent)}`);
        if (!response.ok) throw new Error(`Token: ${response.status} ${await response.text()}`);
        minted = await response.json();
      }
      const wsBase = (minted.server || base).replace(/^http:/, "ws:").replace(/^https:/, "wss:");
      const ws = new WebSocket(`${wsBase}/chat/ws?token=${minted.token}`);
      this.ws = ws;
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        note(this.opts.name || "chat", "event", frame);
        if (frame.event === "chat.connected") this.set({ status: "connected" });
        else if (frame.event === "error") this.set({ status: "error", error: frame.error ?? "Unknown error" });
      };
      ws.onerror = () => this.set({ status: "error", error: "WebSocket error" });
      ws.onclose = (closed) => {
        note(this.opts.name || "chat", "close", { code: closed.code, reason: closed.reason });
        this.ws = null;
        if (this.status === "connected") this.set({ status: "idle" });
      };
    } catch (err) {
      this.set({ status: "error", error: err instanceof Error ? err.message : String(err) });
      this.ws = null;
    }
  }

  disconnect() {
    if (this.ws) this.ws.close();
    this.ws = null;
    this.set({ status: "idle" });
  }
}

class Voice {
  constructor(opts) {
    this.opts = opts;
    this.status = "idle";
    this.idleWarning = null;
    this.error = null;
    this.pc = null;
    this.ping = null;
    this.stream = null;
  }

  set(patch) {
    Object.assign(this, patch);
    note(this.opts.name || "voice", "state", { status: this.status, idleWarning: this.idleWarning, error: this.error });
  }

  async connect() {
    this.set({ status: "connecting", error: null });
    try {
      const base = this.opts.server.replace(/\/$/, "");
      const minted = await fetch(`${base}/webrtc/token?agent_id=${encodeURIComponent(this.opts.agent)}`);
      if (!minted.ok) throw new Error(`Token: ${minted.status}`);
      const { token, server } = await minted.json();
      let iceServers = [{ urls: "stun:stun.l.google.com:19302" }];
      try {
        const ice = await fetch(`${server}/webrtc/ice-servers`);
        if (ice.ok) iceServers = (await ice.json()).iceServers || iceServers;
      } catch {
        /* the client falls back to its STUN default */
      }
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
      const pc = new RTCPeerConnection({ iceServers });
      this.pc = pc;
      this.stream.getTracks().forEach((track) => pc.addTrack(track, this.stream));
      const dc = pc.createDataChannel("events", { ordered: true });
      dc.onopen = () => {
        note(this.opts.name || "voice", "channel-open");
        this.ping = setInterval(() => {
          if (dc.readyState === "open") {
            dc.send("ping");
            client.pings += 1;
          }
        }, 1000);
      };
      dc.onmessage = (message) => this.handle(message);
      // Not something VoiceSession listens to: noted only, to see when the close arrives.
      dc.addEventListener("close", () => note(this.opts.name || "voice", "channel-close"));
      pc.onconnectionstatechange = () => {
        note(this.opts.name || "voice", "pc", pc.connectionState);
        if (pc.connectionState === "connected") {
          this.set({ status: "connected" });
        } else if (pc.connectionState === "disconnected" || pc.connectionState === "failed") {
          this.cleanup();
          this.set({ status: "idle" });
        }
      };
      const offer = await pc.createOffer({ offerToReceiveAudio: true, offerToReceiveVideo: false });
      await pc.setLocalDescription(offer);
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        const timer = setTimeout(resolve, 2000);
        pc.onicegatheringstatechange = () => {
          if (pc.iceGatheringState === "complete") {
            clearTimeout(timer);
            resolve();
          }
        };
      });
      const answered = await fetch(`${server}/webrtc/offer`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, token }),
      });
      if (!answered.ok) throw new Error(`Offer: ${answered.status}`);
      const answer = await answered.json();
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    } catch (err) {
      this.set({ status: "error", error: err instanceof Error ? err.message : String(err) });
      this.cleanup();
    }
  }

  handle(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    note(this.opts.name || "voice", "event", frame);
    if (frame.event === "speech.started") this.set({ idleWarning: null });
    else if (frame.event === "session.idle_warning") this.set({ idleWarning: frame.remaining_seconds ?? 0 });
    else if (frame.event === "session.timeout") this.disconnect();
  }

  cleanup() {
    if (this.ping) clearInterval(this.ping);
    this.ping = null;
    if (this.pc) this.pc.close();
    this.pc = null;
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    this.stream = null;
    this.idleWarning = null;
  }

  disconnect() {
    this.cleanup();
    this.set({ status: "idle" });
  }
}

client.Chat = Chat;
client.Voice = Voice;
