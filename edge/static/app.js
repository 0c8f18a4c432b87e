// vagent's page: sign in, pick or add an assistant, call it over WebRTC, chat while in the call.
// Plain JavaScript, no build step. The REST API is /api/v1 (errors: {"error":{code,message}});
// calls are signalled with POST /webrtc/offer and their events travel on the "events" data channel.
"use strict";

(() => {
  const API = "/api/v1";
  const STORE = window.sessionStorage; // tokens live only as long as this tab
  const $ = (id) => document.getElementById(id);
  const el = {
    body: document.body, notice: $("notice"), who: $("who"), signOut: $("sign-out"),
    authTitle: $("auth-title"), authForm: $("auth-form"), authSubmit: $("auth-submit"),
    authError: $("auth-error"), authSwitch: $("auth-switch"), switchText: $("switch-text"),
    nameField: $("name-field"), displayName: $("display-name"), email: $("email"),
    password: $("password"), passwordHint: $("password-hint"),
    addToggle: $("add-toggle"), addForm: $("add-form"), addSubmit: $("add-submit"),
    addCancel: $("add-cancel"), addError: $("add-error"), aName: $("a-name"),
    aPersona: $("a-persona"), aVoice: $("a-voice"),
    list: $("assistant-list"), empty: $("assistants-empty"),
    status: $("status"), callButton: $("call-button"), callLabel: $("call-label"),
    hangup: $("hangup-button"), speaking: $("speaking"), stopAnswer: $("stop-answer"), meter: $("meter"),
    meterLevel: $("meter-level"), log: $("log"), chatForm: $("chat-form"),
    chatInput: $("chat-input"), chatSend: $("chat-send"), audio: $("remote-audio"),
  };

  // ---------------------------------------------------------------- state

  const session = {
    access: STORE.getItem("vagent.access"),
    refresh: STORE.getItem("vagent.refresh"),
    me: null,
  };
  let assistants = [];
  let selectedId = STORE.getItem("vagent.assistant");
  let registering = false;
  let call = null; // the current call: {pc, dc, stream, sessionId, assistant, ...}

  function setState(state) {
    el.body.dataset.state = state;
    const inCall = state === "in-call";
    const busy = state === "connecting" || inCall;
    el.callButton.hidden = busy;
    el.hangup.hidden = !busy;
    el.callButton.disabled = !selected();
    el.chatInput.disabled = !inCall;
    el.chatSend.disabled = !inCall;
    el.chatInput.placeholder = inCall ? "Type a message" : "Start a call to type a message";
    el.meter.hidden = !busy;
    for (const input of el.list.querySelectorAll("input")) input.disabled = busy;
    if (!inCall) speaking(false);
  }

  function speaking(on) {
    el.speaking.hidden = !on;
    el.stopAnswer.hidden = !on;
  }
  const state = () => el.body.dataset.state;

  function status(text) { el.status.textContent = text; }

  function notice(text, kind = "error") {
    el.notice.textContent = text || "";
    el.notice.className = "notice" + (kind === "info" ? " info" : "");
    el.notice.hidden = !text;
  }

  function showError(target, err) {
    target.textContent = describe(err);
    target.hidden = false;
  }

  // ---------------------------------------------------------------- the REST API

  class ApiError extends Error {
    constructor(status, code, message, details, retryAfter) {
      super(message);
      Object.assign(this, { status, code, details, retryAfter });
    }
  }

  async function errorOf(response) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    const e = (body && body.error) || {};
    return new ApiError(response.status, e.code || "http_" + response.status,
      e.message || `The server answered ${response.status} ${response.statusText}.`,
      e.details || null, response.headers.get("Retry-After"));
  }

  function describe(err) {
    if (!(err instanceof ApiError)) return String((err && err.message) || err);
    let text = err.message;
    const field = err.details && (err.details.field || err.details.at);
    if (field && !text.includes(field)) text += ` (${field})`;
    if (err.code === "rate_limited" || err.code === "account_locked") {
      if (err.retryAfter) text += ` Try again in ${err.retryAfter} s.`;
    }
    if (!/[.!?)]$/.test(text)) text += ".";
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  let refreshing = null;
  function refreshTokens() {
    // one refresh at a time: a spent refresh token presented twice revokes the whole login
    refreshing = refreshing || (async () => {
      try {
        const response = await fetch(API + "/auth/refresh", {
          method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ refresh_token: session.refresh }),
        });
        if (!response.ok) throw await errorOf(response);
        keepTokens(await response.json());
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  // fetch `path` (absolute, e.g. /api/v1/me or /webrtc/offer) with the access token;
  // refresh it once on 401 token_expired. Resolves to the JSON body (null for 204).
  async function request(method, path, body, headers = {}, retried = false) {
    const h = { Accept: "application/json", ...headers };
    if (body !== undefined) h["Content-Type"] = "application/json";
    if (session.access) h.Authorization = "Bearer " + session.access;
    let response;
    try {
      response = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "network", "Cannot reach the server. Check the connection and try again.");
    }
    if (response.ok) return response.status === 204 ? null : response.json();
    const err = await errorOf(response);
    if (response.status === 401 && err.code === "token_expired" && session.refresh && !retried) {
      try {
        await refreshTokens();
      } catch (refreshError) {
        expired(refreshError);
        throw refreshError;
      }
      return request(method, path, body, headers, true);
    }
    if (response.status === 401 && session.access && /^token_|^refresh_token_/.test(err.code)) expired(err);
    throw err;
  }

  function keepTokens(pair) {
    session.access = pair.access_token;
    session.refresh = pair.refresh_token;
    STORE.setItem("vagent.access", pair.access_token);
    STORE.setItem("vagent.refresh", pair.refresh_token);
  }

  function forget() {
    session.access = session.refresh = session.me = null;
    for (const key of ["vagent.access", "vagent.refresh"]) STORE.removeItem(key);
  }

  function expired(err) {
    // the login is over (expired, revoked, refreshed elsewhere): back to the sign-in form
    endCall(call, { send: false });
    forget();
    showSignedOut();
    notice("Your sign-in has ended: " + describe(err) + " Please sign in again.");
  }

  function idempotencyKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // randomUUID() exists only on https or localhost
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---------------------------------------------------------------- signing in

  function showSignedOut() {
    setState("signed-out");
    el.who.textContent = "";
    assistants = [];
    el.list.replaceChildren();
    el.log.replaceChildren();
    el.addForm.hidden = true;
    el.addToggle.setAttribute("aria-expanded", "false");
  }

  function setMode(register) {
    registering = register;
    el.authTitle.textContent = register ? "Create an account" : "Sign in";
    el.authSubmit.textContent = register ? "Create account" : "Sign in";
    el.switchText.textContent = register ? "Have an account?" : "New here?";
    el.authSwitch.textContent = register ? "Sign in" : "Create an account";
    el.nameField.hidden = !register;
    el.passwordHint.hidden = !register;
    el.password.autocomplete = register ? "new-password" : "current-password";
    el.authError.hidden = true;
  }

  async function onAuthSubmit(event) {
    event.preventDefault();
    el.authError.hidden = true;
    notice("");
    const email = el.email.value.trim();
    const password = el.password.value;
    if (!email || !password) {
      showError(el.authError, new Error("Enter your email and password."));
      (email ? el.password : el.email).focus();
      return;
    }
    el.authSubmit.disabled = true;
    const label = el.authSubmit.textContent;
    el.authSubmit.textContent = registering ? "Creating…" : "Signing in…";
    try {
      if (registering) {
        const body = { email, password };
        const name = el.displayName.value.trim();
        if (name) body.display_name = name;
        await request("POST", API + "/auth/register", body);
      }
      keepTokens(await request("POST", API + "/auth/login", { email, password }));
      el.password.value = "";
      await enter();
    } catch (err) {
      showError(el.authError, err);
    } finally {
      el.authSubmit.disabled = false;
      el.authSubmit.textContent = label;
    }
  }

  async function enter() {
    session.me = await request("GET", API + "/me");
    el.who.textContent = session.me.display_name || session.me.email;
    setState("idle");
    status("Pick an assistant and press Call.");
    await loadAssistants();
    $("main").focus();
  }

  async function signOut() {
    endCall(call, { send: true });
    const refresh = session.refresh;
    if (session.access) {
      try { await request("POST", API + "/auth/logout", refresh ? { refresh_token: refresh } : undefined); } catch { /* gone anyway */ }
    }
    forget();
    showSignedOut();
    notice("You are signed out.", "info");
    el.email.focus();
  }

  // ---------------------------------------------------------------- assistants

  const selected = () => assistants.find((a) => a.assistant_id === selectedId) || null;

  async function loadAssistants() {
    el.list.setAttribute("aria-busy", "true");
    const all = [];
    let cursor = null;
    try {
      do {
        const query = "?limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
        const page = await request("GET", API + "/assistants" + query);
        all.push(...page.items);
        cursor = page.next_cursor;
      } while (cursor && all.length < 500);
    } catch (err) {
      notice("Could not load your assistants: " + describe(err));
      return;
    } finally {
      el.list.setAttribute("aria-busy", "false");
    }
    assistants = all;
    if (!selected()) selectedId = (session.me && session.me.default_assistant_id) || (all[0] && all[0].assistant_id) || null;
    renderAssistants();
  }

  function renderAssistants() {
    const items = assistants.map((a) => {
      const li = document.createElement("li");
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "assistant";
      input.value = a.assistant_id;
      input.checked = a.assistant_id === selectedId;
      input.disabled = call !== null;
      input.addEventListener("change", () => choose(a.assistant_id));
      const text = document.createElement("span");
      const name = document.createElement("span");
      name.className = "name";
      name.id = "an-" + a.assistant_id;
      name.textContent = a.name;
      input.setAttribute("aria-labelledby", name.id); // the name alone; the rest describes it
      const title = document.createElement("span");
      title.className = "title";
      title.append(name);
      if (session.me && a.assistant_id === session.me.default_assistant_id) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "default";
        title.append(" ", tag);
      }
      text.append(title);
      const about = [];
      if (title.childElementCount > 1) about.push("your default assistant");
      if (a.persona) {
        const persona = document.createElement("span");
        persona.className = "persona";
        persona.textContent = a.persona;
        text.append(persona);
        about.push(a.persona);
      }
      if (about.length) {
        const hidden = document.createElement("span");
        hidden.id = "ad-" + a.assistant_id;
        hidden.hidden = true;
        hidden.textContent = about.join(": ");
        text.append(hidden);
        input.setAttribute("aria-describedby", hidden.id);
      }
      label.append(input, text);
      li.append(label);
      return li;
    });
    el.list.replaceChildren(...items);
    el.empty.hidden = assistants.length > 0;
    choose(selectedId);
  }

  function choose(id) {
    selectedId = id;
    if (id) STORE.setItem("vagent.assistant", id);
    el.callButton.disabled = !selected() || call !== null;
    const a = selected();
    el.callLabel.textContent = a ? `Call ${a.name}` : "Call";
    if (state() === "idle") status(a ? `Ready to call ${a.name}.` : "Add an assistant to call it.");
  }

  function toggleAdd(open) {
    el.addForm.hidden = !open;
    el.addToggle.setAttribute("aria-expanded", String(open));
    el.addError.hidden = true;
    if (open) {
      el.addForm.dataset.key = idempotencyKey(); // a double submit creates one assistant
      el.aName.focus();
    } else {
      el.addForm.reset();
      el.addToggle.focus();
    }
  }

  async function onAddSubmit(event) {
    event.preventDefault();
    el.addError.hidden = true;
    const name = el.aName.value.trim();
    if (!name) {
      showError(el.addError, new Error("Give the assistant a name."));
      el.aName.focus();
      return;
    }
    const body = { name, persona: el.aPersona.value.trim() };
    const voice = el.aVoice.value.trim();
    if (voice) body.voice = voice;
    el.addSubmit.disabled = true;
    try {
      const created = await request("POST", API + "/assistants", body, { "Idempotency-Key": el.addForm.dataset.key });
      selectedId = created.assistant_id;
      toggleAdd(false);
      await loadAssistants();
      notice(`Added ${created.name}.`, "info");
    } catch (err) {
      showError(el.addError, err);
    } finally {
      el.addSubmit.disabled = false;
    }
  }

  // ---------------------------------------------------------------- the conversation

  function line(kind, text, who) {
    const li = document.createElement("li");
    li.className = "msg " + kind;
    if (who) {
      const label = document.createElement("span");
      label.className = "who-label";
      label.textContent = who;
      li.append(label);
    }
    const span = document.createElement("span");
    span.className = "text";
    span.textContent = text;
    li.append(span);
    const atBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    el.log.append(li);
    if (atBottom) el.log.scrollTop = el.log.scrollHeight;
    return li;
  }
  const setText = (li, text) => { li.querySelector(".text").textContent = text; };
  const follow = () => { el.log.scrollTop = el.log.scrollHeight; };

  function userPartial(c, text) {
    if (!text) return;
    if (!c.partial) c.partial = line("user partial", text, "You");
    else setText(c.partial, text);
    c.partial.dataset.role = "transcript";
    follow();
  }

  function userFinal(c, text, typed) {
    if (!typed) {
      if (c.partial) {
        c.partial.classList.remove("partial");
        setText(c.partial, text);
        c.lastUser = { li: c.partial, text, at: Date.now() };
        c.partial = null;
        return;
      }
    } else if (c.lastUser && c.lastUser.text === text && Date.now() - c.lastUser.at < 3000) {
      return; // the same words, as a transcript and as text: show them once
    }
    const li = line("user", text, "You");
    li.dataset.role = typed ? "typed" : "transcript";
    c.lastUser = { li, text, at: Date.now() };
  }

  function turn(c, m) {
    const key = m.turn_id || "current";
    let t = c.turns.get(key);
    if (!t) {
      const name = c.assistant ? c.assistant.name : "Assistant";
      t = { li: line("assistant streaming", "", name), deltas: "", sentences: [] };
      t.li.dataset.role = "answer";
      c.turns.set(key, t);
    }
    return [key, t];
  }

  function answerDone(c, m) {
    const [key, t] = turn(c, m);
    t.li.classList.remove("streaming");
    setText(t.li, m.text || t.deltas || t.sentences.join(" "));
    if (m.interrupted) interruptedFlag(t.li);
    c.turns.delete(key);
    follow();
  }

  function interruptedFlag(li) {
    if (li.querySelector(".flag")) return;
    const flag = document.createElement("span");
    flag.className = "flag";
    flag.textContent = "(interrupted)";
    li.append(flag);
  }

  function onEvent(c, raw) {
    if (call !== c) return;
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    c.events.push(m.type);
    switch (m.type) {
      case "session":
        c.sessionId = m.session_id || c.sessionId;
        break;
      case "transcript.partial":
        userPartial(c, m.text);
        break;
      case "transcript.final":
        userFinal(c, m.text, false);
        break;
      case "user.text":
        userFinal(c, m.text, true);
        break;
      case "assistant.delta": {
        const [, t] = turn(c, m);
        t.deltas += m.text || "";
        setText(t.li, t.deltas);
        follow();
        break;
      }
      case "assistant.sentence": {
        const [, t] = turn(c, m);
        t.sentences.push(m.display_text || m.text || "");
        if (!t.deltas) setText(t.li, t.sentences.join(" "));
        break;
      }
      case "assistant.message":
        answerDone(c, m);
        break;
      case "tool.call":
        line("note", `Using ${m.name}…`);
        break;
      case "tts.started":
        speaking(true);
        break;
      case "tts.stopped":
        speaking(false);
        break;
      case "turn.interrupted": {
        speaking(false);
        const t = c.turns.get(m.turn_id || "current");
        if (t) interruptedFlag(t.li);
        break;
      }
      case "error":
        notice(describe(new ApiError(0, m.code, m.message || m.code)));
        break;
      case "goodbye": // the server ends the call (shutting down, limits, another connection)
      case "session.ended":
        endCall(c, { send: false });
        status(m.reason && m.reason !== "client_closed" ? `Call ended (${m.reason.replace(/_/g, " ")}).` : "Call ended.");
        break;
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- calls

  function iceGathered(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        pc.removeEventListener("icecandidate", onCandidate);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const onCandidate = (e) => { if (!e.candidate) done(); };
      const timer = setTimeout(done, ms);
      pc.addEventListener("icegatheringstatechange", check);
      pc.addEventListener("icecandidate", onCandidate);
    });
  }

  function micError(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access was blocked. Allow it in the browser's site settings, then call again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Plug one in, then call again.";
      case "NotReadableError":
        return "The microphone is busy in another app. Close it, then call again.";
      default:
        return "Could not open the microphone: " + ((err && err.message) || err);
    }
  }

  function meterFor(c) {
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      c.audioCtx = new Ctx();
      const analyser = c.audioCtx.createAnalyser();
      analyser.fftSize = 512;
      c.audioCtx.createMediaStreamSource(c.stream).connect(analyser);
      const data = new Uint8Array(analyser.fftSize);
      const tick = () => {
        if (call !== c) return;
        analyser.getByteTimeDomainData(data);
        let peak = 0;
        for (const v of data) peak = Math.max(peak, Math.abs(v - 128));
        c.micLevel = peak / 128;
        c.micPeak = Math.max(c.micPeak || 0, c.micLevel);
        el.meterLevel.style.width = Math.min(100, Math.round(c.micLevel * 250)) + "%";
        c.raf = requestAnimationFrame(tick);
      };
      tick();
    } catch { /* the meter is a nicety */ }
  }

  async function startCall() {
    const assistant = selected();
    if (call || !assistant) return;
    notice("");
    if (!window.RTCPeerConnection || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      notice(window.isSecureContext === false
        ? "Calls need a secure page: open this page over https (or on localhost)."
        : "This browser cannot make calls (no WebRTC). Try a current Chrome, Firefox or Safari.");
      return;
    }
    const c = { assistant, pc: null, dc: null, stream: null, sessionId: null, turns: new Map(),
                partial: null, lastUser: null, events: [], connected: false };
    call = c;
    el.log.replaceChildren();
    setState("connecting");
    status(`Connecting to ${assistant.name}…`);
    try {
      c.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      endCall(c, { send: false });
      notice(micError(err));
      return;
    }
    if (call !== c) { c.stream.getTracks().forEach((t) => t.stop()); return; }
    meterFor(c);
    const pc = new RTCPeerConnection({ iceServers: [] });
    c.pc = pc;
    for (const track of c.stream.getAudioTracks()) pc.addTrack(track, c.stream);
    const dc = pc.createDataChannel("events"); // before the offer, so the offer carries it
    c.dc = dc;
    dc.onmessage = (e) => onEvent(c, e.data);
    dc.onopen = () => connected(c);
    dc.onclose = () => {
      if (call === c) { endCall(c, { send: false }); notice("The call was disconnected."); }
    };
    pc.ontrack = (e) => {
      el.audio.srcObject = e.streams[0] || new MediaStream([e.track]);
      el.audio.play().catch(() => { /* autoplay starts it once allowed */ });
    };
    pc.onconnectionstatechange = () => {
      if (call !== c) return;
      if (pc.connectionState === "failed") {
        endCall(c, { send: false });
        notice("The call's connection failed: the server could not be reached for audio.");
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, 5000); // no trickle: the offer carries every candidate
      if (call !== c) return;
      const answer = await request("POST", "/webrtc/offer", {
        sdp: pc.localDescription.sdp, type: "offer", assistant_id: assistant.assistant_id,
      });
      if (call !== c) return;
      c.sessionId = answer.session_id || null;
      await pc.setRemoteDescription({ type: answer.type || "answer", sdp: answer.sdp });
    } catch (err) {
      if (call !== c) return;
      endCall(c, { send: false });
      notice("Could not start the call: " + describe(err));
      return;
    }
    c.timer = setTimeout(() => {
      if (call === c && !c.connected) {
        endCall(c, { send: false });
        notice("The call did not connect in time. Check the network and try again.");
      }
    }, 20000);
  }

  function connected(c) {
    if (call !== c || c.connected) return;
    c.connected = true;
    clearTimeout(c.timer);
    setState("in-call");
    status(`In a call with ${c.assistant.name}. Speak, or type below.`);
    el.chatInput.focus();
  }

  // End call `c` (the current one or a stale one); `send` tells the server first.
  function endCall(c, { send }) {
    if (!c || c.ended) return;
    c.ended = true;
    clearTimeout(c.timer);
    if (c.raf) cancelAnimationFrame(c.raf);
    if (c.audioCtx) c.audioCtx.close().catch(() => {});
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    const close = () => { try { if (c.pc) c.pc.close(); } catch { /* closed */ } };
    if (send && c.dc && c.dc.readyState === "open") {
      try { c.dc.send(JSON.stringify({ type: "hangup" })); } catch { /* closing */ }
      setTimeout(close, 300); // let the hangup leave before the transport closes
    } else {
      close();
    }
    if (call === c) {
      call = null;
      el.audio.srcObject = null;
      el.meterLevel.style.width = "0";
      if (c.partial) c.partial.classList.remove("partial");
      for (const t of c.turns.values()) t.li.classList.remove("streaming");
      if (session.access) {
        setState("idle");
        choose(selectedId); // "Ready to call …"
        if (c.connected) status("Call ended.");
      }
    }
  }

  function hangUp() {
    endCall(call, { send: true });
    el.callButton.focus();
  }

  function stopAnswer() {
    if (call && call.dc && call.dc.readyState === "open") call.dc.send(JSON.stringify({ type: "abort" }));
    speaking(false);
    el.chatInput.focus();
  }

  function onChat(event) {
    event.preventDefault();
    const text = el.chatInput.value.trim();
    if (!text || !call || !call.dc || call.dc.readyState !== "open") return;
    call.dc.send(JSON.stringify({ type: "user.text", text }));
    el.chatInput.value = "";
  }

  // Received-audio figures of the current call, from the peer connection's statistics.
  async function audioStats() {
    const c = call;
    if (!c || !c.pc) return null;
    const report = await c.pc.getStats();
    let inbound = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") inbound = s;
    });
    return inbound && {
      packetsReceived: inbound.packetsReceived || 0,
      bytesReceived: inbound.bytesReceived || 0,
      totalAudioEnergy: inbound.totalAudioEnergy || 0,
      totalSamplesReceived: inbound.totalSamplesReceived || 0,
      micLevel: c.micLevel || 0,
      micPeak: c.micPeak || 0,
    };
  }

  // ---------------------------------------------------------------- wiring

  el.authForm.addEventListener("submit", onAuthSubmit);
  el.authSwitch.addEventListener("click", () => { setMode(!registering); el.email.focus(); });
  el.signOut.addEventListener("click", signOut);
  el.addToggle.addEventListener("click", () => toggleAdd(el.addForm.hidden));
  el.addCancel.addEventListener("click", () => toggleAdd(false));
  el.addForm.addEventListener("submit", onAddSubmit);
  el.callButton.addEventListener("click", startCall);
  el.hangup.addEventListener("click", hangUp);
  el.stopAnswer.addEventListener("click", stopAnswer);
  el.chatForm.addEventListener("submit", onChat);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !el.addForm.hidden) toggleAdd(false);
  });
  window.addEventListener("pagehide", () => endCall(call, { send: true }));

  // for people debugging in the console, and for the page's tests
  window.vagent = {
    state, audioStats,
    get sessionId() { return call ? call.sessionId : null; },
    get events() { return call ? call.events.slice() : []; },
  };

  setMode(false);
  if (session.access) {
    enter().catch((err) => {
      if (session.access) { forget(); showSignedOut(); notice(describe(err)); }
    });
  } else {
    showSignedOut();
  }
})();
