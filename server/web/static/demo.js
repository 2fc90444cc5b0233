// voice-server demo client: WebRTC voice and WebSocket chat, the way @pinecall/web talks to a server.
// No dependencies and no external URLs. State is exposed on window.demo for tests and curious people.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const agent = params.get("agent") || "demo";

  // The public mint path needs an Origin header, and browsers send none on a same-origin GET.
  // A widget on another site is always cross-origin, so the demo mints from this server's
  // loopback twin (localhost <-> 127.0.0.1, same port) unless ?server= names a base URL.
  function twinBase() {
    const twins = { localhost: "127.0.0.1", "127.0.0.1": "localhost" };
    const host = twins[location.hostname] || location.hostname;
    return `${location.protocol}//${host}${location.port ? ":" + location.port : ""}`;
  }
  const mintBase = (params.get("server") || twinBase()).replace(/\/+$/, "");

  const $ = (id) => document.getElementById(id);
  $("agent").textContent = agent;
  $("mint-base").textContent = mintBase;

  const demo = {
    agent,
    mintBase,
    voiceState: "idle",
    chatState: "idle",
    events: [], // every event seen: {source: "voice" | "chat", data}
    botText: {}, // message_id -> text built from bot.word only (as the real client does)
    chatText: {}, // message_id -> latest cumulative chat.token text
    errors: [],
    pc: null,
    dc: null,
    ws: null,
    async inboundAudio() {
      if (!demo.pc) return null;
      const stats = await demo.pc.getStats();
      let found = null;
      stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          found = { packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived };
        }
      });
      return found;
    },
  };
  window.demo = demo;

  function logEvent(source, data) {
    demo.events.push({ source, data });
    const item = document.createElement("li");
    item.textContent = `${source}: ${typeof data === "string" ? data : JSON.stringify(data)}`;
    const log = $("event-log");
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
  }

  function fail(where, err) {
    const text = `${where}: ${err && err.message ? err.message : err}`;
    demo.errors.push(text);
    logEvent("error", text);
  }

  function bubble(listId, key, role, text) {
    const list = $(listId);
    let item = key ? list.querySelector(`li[data-key="${CSS.escape(key)}"]`) : null;
    if (!item) {
      item = document.createElement("li");
      item.className = role;
      if (key) item.dataset.key = key;
      list.appendChild(item);
    }
    item.textContent = text;
  }

  async function getJson(url) {
    const res = await fetch(url);
    if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
    return res.json();
  }

  // -- voice ---------------------------------------------------------------------------------
  let pingTimer = null;
  let mic = null;
  let connectTimer = null;
  const CONNECT_MS = 17000;
  const NO_MEDIA =
    "media never connected (no ICE route to the server). Over loopback only: run the server with " +
    "VOICE_RTC_HOST_ADDRESSES=127.0.0.1 and Chromium with --allow-loopback-in-peer-connection. Press Start to retry.";

  function setVoice(state) {
    demo.voiceState = state;
    $("voice-state").textContent = state;
    const live = state === "connected";
    $("voice-start").disabled = state !== "idle" && state !== "closed" && state !== "failed";
    $("voice-stop").disabled = !demo.pc;
    $("voice-mute").disabled = !live;
    $("voice-text").disabled = !live;
    $("voice-send").disabled = !live;
  }

  function sendAction(action) {
    if (demo.dc && demo.dc.readyState === "open") demo.dc.send(JSON.stringify(action));
  }

  function onVoiceEvent(raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch {
      return; // non-JSON is ignored, as the real client does
    }
    logEvent("voice", data);
    const id = data.message_id;
    switch (data.event) {
      case "user.message":
        bubble("voice-transcript", id, "user", data.text);
        break;
      case "bot.speaking":
        demo.botText[id] = "";
        break;
      case "bot.word":
        demo.botText[id] = demo.botText[id] ? `${demo.botText[id]} ${data.word}` : data.word;
        bubble("voice-transcript", id, "bot", demo.botText[id]);
        break;
      case "session.timeout":
      case "call.ended":
        stopVoice();
        break;
      default:
        break;
    }
  }

  function gatheringDone(pc, ms) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, ms);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  async function startVoice() {
    setVoice("connecting");
    try {
      const minted = await getJson(`${mintBase}/webrtc/token?agent_id=${encodeURIComponent(agent)}`);
      const server = minted.server.replace(/\/+$/, "");
      let iceServers = [];
      try {
        const res = await fetch(`${server}/webrtc/ice-servers`);
        if (res.ok) iceServers = (await res.json()).iceServers || [];
      } catch (err) {
        fail("ice-servers", err);
      }
      const pc = new RTCPeerConnection({ iceServers });
      demo.pc = pc;
      pc.onconnectionstatechange = () => {
        logEvent("voice", `connectionState ${pc.connectionState}`);
        if (pc.connectionState === "connected") {
          clearTimeout(connectTimer);
          setVoice("connected");
        }
        if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          if (demo.voiceState !== "connected") fail("voice", new Error(NO_MEDIA));
          stopVoice(pc.connectionState === "closed" ? "closed" : "failed");
        }
      };
      pc.ontrack = (e) => {
        $("voice-audio").srcObject = e.streams[0] || new MediaStream([e.track]);
      };
      mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      mic.getTracks().forEach((track) => pc.addTrack(track, mic));
      const dc = pc.createDataChannel("events", { ordered: true });
      demo.dc = dc;
      dc.onopen = () => {
        pingTimer = setInterval(() => dc.readyState === "open" && dc.send("ping"), 1000);
      };
      dc.onmessage = (e) => onVoiceEvent(e.data);
      await pc.setLocalDescription(await pc.createOffer({ offerToReceiveAudio: true }));
      await gatheringDone(pc, 2000); // non-trickle: every candidate goes in the offer
      const body = {
        sdp: pc.localDescription.sdp,
        type: pc.localDescription.type,
        token: minted.token,
        metadata: { page: "demo" },
      };
      const res = await fetch(`${server}/webrtc/offer`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!res.ok) throw new Error(`offer ${res.status} ${await res.text()}`);
      const answer = await res.json();
      logEvent("voice", { answer: { session_id: answer.session_id, pc_id: answer.pc_id } });
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      // The server ends a session whose media has not connected in 15 s (connect_timeout);
      // the page says so a little later and offers Start again instead of waiting forever.
      connectTimer = setTimeout(() => {
        if (demo.pc === pc && pc.connectionState !== "connected") {
          fail("voice", new Error(NO_MEDIA));
          stopVoice("failed");
        }
      }, CONNECT_MS);
    } catch (err) {
      fail("voice", err);
      stopVoice("failed");
    }
  }

  function stopVoice(state = "closed") {
    clearTimeout(connectTimer);
    clearInterval(pingTimer);
    pingTimer = null;
    if (mic) mic.getTracks().forEach((track) => track.stop());
    mic = null;
    if (demo.pc) demo.pc.close();
    demo.pc = null;
    demo.dc = null;
    setVoice(state);
  }

  $("voice-start").addEventListener("click", startVoice);
  $("voice-stop").addEventListener("click", () => stopVoice());
  $("voice-mute").addEventListener("click", () => {
    const muting = $("voice-mute").textContent === "Mute";
    sendAction({ action: muting ? "mute" : "unmute" });
    $("voice-mute").textContent = muting ? "Unmute" : "Mute";
  });
  $("voice-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("voice-text").value.trim();
    if (!text) return;
    sendAction({ action: "inject_text", text });
    $("voice-text").value = "";
  });

  // -- chat ----------------------------------------------------------------------------------
  function setChat(state) {
    demo.chatState = state;
    $("chat-state").textContent = state;
    const live = state === "connected";
    $("chat-start").disabled = state === "connecting" || live;
    $("chat-stop").disabled = !demo.ws;
    $("chat-text").disabled = !live;
    $("chat-send").disabled = !live;
  }

  async function startChat() {
    setChat("connecting");
    try {
      const minted = await getJson(`${mintBase}/chat/token?agent_id=${encodeURIComponent(agent)}`);
      const wsBase = (minted.server || mintBase).replace(/\/+$/, "").replace(/^http:/, "ws:").replace(/^https:/, "wss:");
      const ws = new WebSocket(`${wsBase}/chat/ws?token=${minted.token}`);
      demo.ws = ws;
      ws.onmessage = (e) => {
        let data;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        logEvent("chat", data);
        if (data.event === "chat.connected") setChat("connected");
        if (data.event === "chat.token" || data.event === "chat.done") {
          demo.chatText[data.message_id] = data.text; // cumulative
          bubble("chat-transcript", data.message_id, "bot", data.text);
        }
        if (data.event === "chat.error" || data.event === "error") fail("chat", data.error);
      };
      ws.onclose = () => {
        demo.ws = null;
        setChat("closed");
      };
    } catch (err) {
      fail("chat", err);
      setChat("failed");
    }
  }

  $("chat-start").addEventListener("click", startChat);
  $("chat-stop").addEventListener("click", () => demo.ws && demo.ws.close());
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("chat-text").value.trim();
    if (!text || !demo.ws) return;
    demo.ws.send(JSON.stringify({ event: "message", text }));
    bubble("chat-transcript", null, "user", text);
    $("chat-text").value = "";
  });

  setVoice("idle");
  setChat("idle");
})();
