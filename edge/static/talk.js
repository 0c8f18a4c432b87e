// The conversation with one assistant: typed over the JSON WebSocket /ws (no call, no
// microphone needed) or spoken in a WebRTC call (POST /webrtc/offer, events on the call's
// "events" data channel, which also takes typed text). Both carry the session's events in
// the same vocabulary. A photo (with what is typed as its question) goes over /ws only, so
// not during a call. Switching between them resumes the same session (`session_id`), so
// the assistant keeps the thread; a session the server no longer resumes starts a new one.

import { API, ApiError, describe, request } from "./api.js";
import { follow, line, setText, toolWords } from "./lines.js";
import { RESUME_REFUSED, audioStats, close, connectText, iceGathered, offer } from "./links.js";
import * as media from "./media.js";

const $ = (id) => document.getElementById(id);
const el = {
  body: document.body, notice: $("notice"), status: $("status"), activity: $("activity"),
  activityLabel: $("activity-label"), callButton: $("call-button"), callLabel: $("call-label"),
  callHint: $("call-hint"), hangup: $("hangup-button"), controls: $("call-controls"),
  mute: $("mute-button"), stopAnswer: $("stop-answer"), meter: $("meter"), meterLevel: $("meter-level"),
  viz: $("voice-viz"), log: $("log"), chatInput: $("chat-input"), chatSend: $("chat-send"),
  photoButton: $("photo-button"),
  audio: $("remote-audio"), devices: $("devices"), micField: $("mic-field"), micSelect: $("mic-select"),
  speakerField: $("speaker-field"), speakerSelect: $("speaker-select"), list: $("assistant-list"),
};

const LABELS = {
  idle: "Ready", connecting: "Connecting…", listening: "Listening", thinking: "Thinking…",
  speaking: "Speaking", disconnected: "Disconnected",
};

function fresh(assistant) {
  return {
    assistant, sessionId: null,
    link: null, // what typed text goes to: the open call, else the text connection
    lost: false, // the connection dropped without anyone asking
    turns: new Map(), partial: null, lastUser: null, tools: new Map(),
    pending: [], // typed lines sent but not yet in the session
    photos: [], // photos sent and not yet described: {li, recorded}
    waiting: new Set(), // inputs (their ids name their turns) not answered yet
    heard: false, watchdog: 0, // speech ended, its transcript not in yet
    answering: false, audio: false, events: [],
    listed: false, // the session is in the history list (once it has an answer)
  };
}
let conv = fresh(null);
const activities = []; // every state the page showed, in order (for the page's tests)
let sessionsChanged = () => {}; // a session of this page got its first answer or ended: the history refreshes

export function whenSessionsChange(handler) { sessionsChanged = handler; }

function notice(text, kind = "error") {
  el.notice.textContent = text || "";
  el.notice.className = "notice" + (kind === "info" ? " info" : "");
  el.notice.hidden = !text;
}
// The status line; `idle` ones are said again when it turns out whether a call is possible.
let idleStatus = null;
function status(text, idle = null) {
  el.status.textContent = text;
  idleStatus = idle;
}

// ---------------------------------------------------------------- what the page shows

function activity() {
  const link = conv.link;
  if (!link) return conv.lost ? "disconnected" : "idle";
  if (!link.open) return "connecting";
  if (conv.audio || conv.answering) return "speaking";
  if (conv.pending.length || conv.photos.length || conv.waiting.size || conv.heard) return "thinking";
  return link.kind === "call" ? "listening" : "idle";
}

const inCall = () => (conv.link && conv.link.kind === "call" ? conv.link : null);

/** Bring the conversation card in line with the conversation's state. */
export function render() {
  const call = inCall();
  const page = el.body.dataset.state;
  if (page !== "signed-out" && page !== "loading") {
    el.body.dataset.state = call ? (call.open ? "in-call" : "connecting") : "idle";
  }
  const mic = media.micStatus();
  const name = conv.assistant ? conv.assistant.name : "";
  el.callButton.hidden = Boolean(call);
  el.hangup.hidden = !call;
  el.callButton.disabled = !conv.assistant || !mic.ok;
  el.callLabel.textContent = !mic.ok ? mic.label : name ? `Call ${name}` : "Call";
  el.callButton.title = mic.why;
  el.callHint.textContent = mic.why;
  el.callHint.hidden = mic.ok;
  el.controls.hidden = !call;
  el.meter.hidden = !call;
  el.chatInput.disabled = el.chatSend.disabled = !conv.assistant;
  el.photoButton.disabled = !conv.assistant || Boolean(call);
  el.photoButton.title = call ? "Photos can be sent when not in a call: hang up first"
    : "Attach a photo (what you type goes with it as a question)";
  el.chatInput.placeholder = !conv.assistant ? "Add an assistant to talk to it"
    : call ? "Type a message (in the call)" : `Message ${name}`;
  for (const input of el.list.querySelectorAll("input")) input.disabled = Boolean(call);
  const a = activity();
  el.activity.dataset.activity = a;
  el.activityLabel.textContent = a === "speaking" && !call ? "Answering…" : LABELS[a];
  if (activities[activities.length - 1] !== a) activities.push(a);
  el.stopAnswer.hidden = !(conv.link && conv.link.open && (conv.answering || conv.audio));
  el.mute.setAttribute("aria-pressed", String(Boolean(call && call.muted)));
  el.mute.textContent = call && call.muted ? "Unmute" : "Mute";
  el.micField.hidden = !mic.ok;
  // a speaker to choose: only where the browser lets a page route audio, and names them
  el.speakerField.hidden = !media.canSetSpeaker() || el.speakerSelect.options.length < 2;
  el.devices.hidden = el.micField.hidden && el.speakerField.hidden;
}

export async function refreshDevices() {
  await media.refreshDevices();
  media.fillPicker(el.micSelect, media.devices.inputs, media.chosenMic(), "microphone");
  media.fillPicker(el.speakerSelect, media.devices.outputs, media.chosenSpeaker(), "speaker");
  if (idleStatus) idleStatus();
  render();
}

// ---------------------------------------------------------------- the conversation's lines

function clearLog() {
  el.log.replaceChildren();
}

function userPartial(text) {
  if (!text) return;
  if (!conv.partial) conv.partial = line(el.log, "user partial", text, "You");
  else setText(conv.partial, text);
  conv.partial.dataset.role = "transcript";
  follow(el.log);
}

function userFinal(text, typed) {
  if (typed) {
    const waiting = conv.pending.findIndex((p) => p.text === text);
    if (waiting >= 0) { // shown when it was sent: now the server has it
      conv.pending[waiting].li.classList.remove("sending");
      conv.pending.splice(waiting, 1);
      return;
    }
    if (conv.lastUser && conv.lastUser.text === text && Date.now() - conv.lastUser.at < 3000) {
      return; // the same words, as a transcript and as text: show them once
    }
  } else if (conv.partial) {
    conv.partial.classList.remove("partial");
    setText(conv.partial, text);
    conv.lastUser = { li: conv.partial, text, at: Date.now() };
    conv.partial = null;
    return;
  }
  const li = line(el.log, "user", text, "You");
  li.dataset.role = typed ? "typed" : "transcript";
  conv.lastUser = { li, text, at: Date.now() };
}

// An answer's bubble appears with its first words, never empty.
function bubble(m, text) {
  const key = m.turn_id || "current";
  let t = conv.turns.get(key);
  if (!t) {
    if (!text) return null;
    t = { li: line(el.log, "assistant streaming", "", conv.assistant ? conv.assistant.name : "Assistant"),
          deltas: "", sentences: [] };
    t.li.dataset.role = "answer";
    conv.turns.set(key, t);
  }
  return t;
}

function delta(m) {
  const t = bubble(m, m.text);
  if (!t) return;
  t.deltas += m.text;
  setText(t.li, t.deltas);
  follow(el.log);
}

function spoken(m) {
  const text = m.display_text || m.text || "";
  const t = bubble(m, text);
  if (!t) return;
  t.sentences.push(text);
  if (!t.deltas) setText(t.li, t.sentences.join(" "));
}

// The end of one step of a turn: the final answer, or words before a tool step (the turn
// goes on after the tools answer, in a bubble of its own).
function stepDone(m) {
  const key = m.turn_id || "current";
  const t = m.text ? bubble(m, m.text) : conv.turns.get(key);
  if (t) {
    t.li.classList.remove("streaming");
    setText(t.li, m.text || t.deltas || t.sentences.join(" "));
    if (m.interrupted) interruptedFlag(t.li);
    conv.turns.delete(key);
    follow(el.log);
  }
}

function interruptedFlag(li) {
  if (li.querySelector(".flag")) return;
  const flag = document.createElement("span");
  flag.className = "flag";
  flag.textContent = "(interrupted)";
  li.append(flag);
}

function toolStep(m, phase) {
  let li = conv.tools.get(m.call_id);
  if (!li) {
    li = line(el.log, "note tool", "");
    li.dataset.role = "tool";
    conv.tools.set(m.call_id, li);
  }
  setText(li, toolWords(m.name, phase));
  li.classList.toggle("failed", phase === 2);
}

// ---------------------------------------------------------------- the session's events

function heard(on) {
  clearTimeout(conv.watchdog);
  conv.heard = on;
  // a sound without words makes no turn: stop waiting for its transcript after a while
  if (on) conv.watchdog = setTimeout(() => { conv.heard = false; render(); }, 8000);
}

function answered(turnId) {
  if (turnId) conv.waiting.delete(turnId);
}

function refused(m) {
  // an input the session refused (too long, too many): it never becomes a turn
  const last = conv.pending.pop();
  if (last) last.li.classList.replace("sending", "unsent");
  notice(describe(new ApiError(0, m.code, m.message || m.code)));
}

// ---------------------------------------------------------------- photos

const PHOTO_TYPES = new Set(["image/jpeg", "image/png", "image/webp"]);
// The server's refusals of a photo, in the page's words.
const PHOTO_REFUSALS = {
  image_too_large: (m) => {
    const limit = m.details && m.details.limit;
    return "The photo is too large" + (limit ? `: this server takes photos up to ${size(limit)}.` : ".");
  },
  vision_not_configured: () => "This server cannot look at photos: it has no vision model configured.",
  not_an_image: () => "That file is not a photo this server reads: send a JPEG, PNG or WebP.",
  vision_failed: (m) => "The photo could not be described: " + (m.message || "the vision model failed."),
  question_too_long: (m) => "The question with the photo is too long: " + (m.message || ""),
  // a photo's message over the server's frame limit: it takes no large photos (no vision model)
  frame_too_large: () => "The photo is too large for this server (it may not be set up to look at photos).",
};

const size = (n) => (n >= 1e6 ? `${Math.round(n / 1e5) / 10} MB` : `${Math.ceil(n / 1e3)} KB`);

// A phone's photo is larger than a vision model looks at (models scale photos to about
// 2048 px) and may be larger than the server takes: a large one goes as a JPEG that size.
const LARGE_PHOTO_BYTES = 1_500_000;
const MAX_SIDE = 2048;

async function fitted(file) {
  if (file.size <= LARGE_PHOTO_BYTES || typeof createImageBitmap !== "function") return file;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // turned as the camera held it (EXIF)
  } catch {
    return file; // not one the browser reads: the server says what is wrong with it
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; // a PNG's transparency, on white rather than JPEG's black
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  return blob && blob.size < file.size ? blob : file;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(0, "unreadable", "The photo could not be read."));
    reader.readAsDataURL(file);
  });
}

/** Send a photo over /ws (opened if need be) with `question` (may be empty); not in a call,
 * whose data channel takes no photos. It shows at once as a thumbnail in the user's bubble. */
export async function sendPhoto(file, question) {
  if (!conv.assistant || !file || inCall()) return;
  notice("");
  if (!PHOTO_TYPES.has(file.type)) {
    notice("Send a JPEG, PNG or WebP photo.");
    return;
  }
  let url;
  try {
    url = await readAsDataUrl(await fitted(file));
  } catch (err) {
    notice(describe(err));
    return;
  }
  const li = line(el.log, "user sending", question, "You");
  li.dataset.role = "photo";
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = url;
  img.alt = question ? "Your photo" : "Your photo (no question)";
  li.insertBefore(img, li.querySelector(".text"));
  const photo = { li, recorded: false };
  conv.photos.push(photo);
  follow(el.log);
  render();
  try {
    const link = conv.link ? await conv.link.ready : await openText();
    if (link.kind === "call") throw new ApiError(0, "in_call", "Photos cannot be sent during a call.");
    link.send({ type: "user.image", image: url.slice(url.indexOf(",") + 1), text: question });
  } catch (err) {
    conv.photos = conv.photos.filter((p) => p !== photo);
    li.classList.replace("sending", "unsent");
    notice("Your photo was not sent: " + describe(err));
    render();
  }
}

// The session recorded the photo; its description is on the way.
function photoRecorded() {
  const photo = conv.photos.find((p) => !p.recorded);
  if (!photo) return;
  photo.recorded = true;
  photo.li.classList.remove("sending");
}

// The photo's turn: the question and the description, which the photo's bubble stands for.
function photoDescribed(m) {
  const photo = conv.photos.shift();
  if (photo && m.text) photo.li.title = m.text;
}

function photoRefused(m) {
  const photo = conv.photos.shift();
  if (photo) photo.li.classList.replace("sending", "unsent");
  const li = line(el.log, "note failed", PHOTO_REFUSALS[m.code](m));
  li.dataset.role = "photo-error";
  follow(el.log);
}

function onEvent(link, raw) {
  if (!link.attached) return;
  let m;
  try { m = JSON.parse(raw); } catch { return; }
  if (!m || typeof m.type !== "string") return;
  conv.events.push(m.type);
  switch (m.type) {
    case "session":
      conv.sessionId = m.session_id || conv.sessionId;
      break;
    case "speech.started":
      heard(false);
      break;
    case "speech.stopped":
      heard(true); // thinking from the end of speech
      break;
    case "transcript.partial":
      userPartial(m.text);
      break;
    case "transcript.final":
      heard(false);
      userFinal(m.text, false);
      if (m.id) conv.waiting.add(m.id);
      break;
    case "user.image":
      photoRecorded();
      break;
    case "user.text":
      if (m.source === "image") photoDescribed(m);
      else userFinal(m.text, true);
      if (m.id) conv.waiting.add(m.id);
      break;
    case "assistant.delta":
      if (m.text) conv.answering = true;
      delta(m);
      break;
    case "assistant.sentence":
      conv.answering = true;
      spoken(m);
      break;
    case "assistant.message":
      stepDone(m);
      conv.answering = false;
      // a step that asked for tools: the turn goes on when they answer
      if (!(m.tool_calls && m.tool_calls.length) || m.interrupted) answered(m.turn_id);
      if (m.text && !conv.listed && conv.waiting.size === 0) {
        conv.listed = true;
        setTimeout(() => sessionsChanged(), 1000); // the read model follows the log within moments
      }
      break;
    case "tool.call":
      toolStep(m, 0);
      break;
    case "tool.result":
      toolStep(m, m.is_error ? 2 : 1);
      break;
    case "tts.started":
      conv.audio = true;
      break;
    case "tts.stopped":
      conv.audio = false;
      break;
    case "turn.interrupted": {
      conv.audio = conv.answering = false;
      answered(m.turn_id);
      const t = conv.turns.get(m.turn_id || "current");
      if (t) interruptedFlag(t.li);
      break;
    }
    case "error":
      if (m.code === "too_many_turns" || m.code === "text_too_long") {
        refused(m);
        break;
      }
      if (Object.hasOwn(PHOTO_REFUSALS, m.code) && (conv.photos.length || m.code !== "frame_too_large")) {
        photoRefused(m);
        break;
      }
      if (m.turn_id) answered(m.turn_id);
      else conv.waiting.clear();
      notice(describe(new ApiError(0, m.code, m.message || m.code)));
      break;
    case "session.ended": // the session is over (the user said goodbye, an operator ended it)
      conv.sessionId = null;
      finish(link, { send: false, why: m.reason });
      break;
    case "goodbye": // the server ends this connection (shutting down, limits, replaced)
      lost(link, { why: m.reason });
      break;
    default:
      break;
  }
  render();
}

// ---------------------------------------------------------------- typing: /ws

function began(link, session) {
  const previous = conv.sessionId;
  conv.sessionId = session.session_id;
  if (previous !== session.session_id) conv.listed = false;
  if (previous && previous !== session.session_id && el.log.childElementCount) {
    line(el.log, "note", "New conversation").dataset.role = "divider";
  }
  link.open = true;
  conv.lost = false;
}

function openText() {
  const link = { kind: "text", open: false, attached: true, ws: null };
  link.send = (message) => link.ws.send(JSON.stringify(message));
  conv.link = link;
  conv.lost = false;
  link.ready = (async () => {
    let resume = conv.sessionId;
    for (let tries = 0; ; tries++) {
      try {
        const session = await connectText(link, conv.assistant.assistant_id, resume, {
          onEvent: (raw) => onEvent(link, raw), onLost: () => lost(link, {}),
        });
        if (!link.attached) { // a call took over while this connected
          close(link);
          throw new ApiError(0, "ended", "A call took over the conversation.");
        }
        began(link, session);
        talking();
        render();
        return link;
      } catch (err) {
        if (conv.link !== link || tries >= 3) throw err;
        if (err.code === "token_expired") {
          await request("GET", API + "/me"); // refreshes the token (or ends the sign-in)
        } else if (err.code === "session_active" && tries === 0) {
          await new Promise((r) => setTimeout(r, 1000)); // its last connection is still closing
        } else if (resume && RESUME_REFUSED.has(err.code)) {
          resume = null; // too late to resume: a new session
        } else {
          throw err;
        }
      }
    }
  })();
  link.ready.catch(() => {
    if (conv.link === link) { conv.link = null; link.attached = false; render(); }
  });
  render();
  return link.ready;
}

/** Send typed text: in the call if there is one, else over /ws (opened on the first message). */
export async function send(text) {
  if (!conv.assistant || !text) return;
  notice("");
  const li = line(el.log, "user sending", text, "You");
  li.dataset.role = "typed";
  conv.pending.push({ text, li });
  follow(el.log);
  render();
  try {
    const link = conv.link ? await conv.link.ready : await openText();
    link.send({ type: "user.text", text });
  } catch (err) {
    conv.pending = conv.pending.filter((p) => p.li !== li);
    li.classList.replace("sending", "unsent");
    notice("Your message was not sent: " + describe(err));
    render();
  }
}

export function stopAnswer() {
  const link = conv.link;
  if (link && link.open) {
    try { link.send({ type: "abort" }); } catch { /* closing */ }
  }
  conv.audio = conv.answering = false;
  render();
  el.chatInput.focus();
}

// ---------------------------------------------------------------- calling: WebRTC

export async function startCall() {
  if (!conv.assistant || inCall() || !media.micStatus().ok) return;
  notice("");
  // an open text connection keeps showing events until the call replaces it; one still
  // connecting is dropped
  let typing = conv.link;
  if (typing && !typing.open) {
    finish(typing, { send: false });
    typing = null;
  }
  const link = { kind: "call", open: false, attached: true, pc: null, dc: null, stream: null,
                 muted: false, meter: null, viz: null, timer: 0 };
  let opened;
  link.ready = new Promise((resolve, reject) => { opened = resolve; link.fail = reject; });
  link.ready.catch(() => {});
  link.opened = opened;
  link.send = (message) => link.dc.send(JSON.stringify(message));
  conv.link = link;
  render();
  status(`Connecting to ${conv.assistant.name}…`);
  try {
    link.stream = await media.openMic();
  } catch (err) {
    finish(link, { send: false, back: typing });
    notice(media.micError(err));
    return;
  }
  if (!link.attached) { link.stream.getTracks().forEach((t) => t.stop()); return; }
  refreshDevices(); // names are readable once the microphone is allowed
  link.meter = media.level(link.stream, (v) => {
    el.meterLevel.style.width = Math.min(100, Math.round(v * 250)) + "%";
  });
  const pc = new RTCPeerConnection({ iceServers: [] });
  link.pc = pc;
  for (const track of link.stream.getAudioTracks()) pc.addTrack(track, link.stream);
  const dc = pc.createDataChannel("events"); // before the offer, so the offer carries it
  link.dc = dc;
  dc.onmessage = (e) => onEvent(link, e.data);
  dc.onopen = () => connected(link);
  dc.onclose = () => lost(link, { message: "The call was disconnected." });
  pc.ontrack = (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    el.audio.srcObject = stream;
    media.routeSpeaker(el.audio);
    el.audio.play().catch(() => { /* autoplay starts it once allowed */ });
    if (link.viz) link.viz.stop();
    link.viz = media.bars(stream, el.viz);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") {
      lost(link, { message: "The call's connection failed: the server could not be reached for audio." });
    }
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, 5000); // no trickle: the offer carries every candidate
    if (!link.attached) return;
    // From here the server may replace the text connection with this call (same session).
    if (typing) typing.replaced = true;
    const answer = await offer(pc, conv.assistant.assistant_id, conv.sessionId,
                               media.echoCancelled(link.stream));
    if (!link.attached) return;
    began(link, answer);
    link.open = false; // open once the data channel is
    await pc.setRemoteDescription({ type: answer.type || "answer", sdp: answer.sdp });
  } catch (err) {
    if (!link.attached) return;
    finish(link, { send: false, back: typing && !typing.replaced ? typing : null });
    notice("Could not start the call: " + describe(err));
    return;
  }
  if (typing) { typing.attached = false; close(typing); }
  link.timer = setTimeout(() => {
    if (link.attached && !link.open) {
      finish(link, { send: false });
      notice("The call did not connect in time. Check the network and try again.");
    }
  }, 20000);
}

function connected(link) {
  if (!link.attached || link.open) return;
  link.open = true;
  clearTimeout(link.timer);
  link.opened(link);
  status(`In a call with ${conv.assistant.name}. Speak, or type below.`);
  render();
  el.chatInput.focus();
}

export function mute(on) {
  const call = inCall();
  if (!call) return;
  call.muted = on === undefined ? !call.muted : on;
  if (call.stream) call.stream.getAudioTracks().forEach((t) => { t.enabled = !call.muted; });
  render();
}

/** Use another microphone: at once in a call (the sender's track is replaced, no renegotiation). */
export async function switchMic(id) {
  media.choose("mic", id);
  const call = inCall();
  if (!call || !call.pc || !call.stream) return;
  let stream;
  try {
    stream = await media.openMic();
  } catch (err) {
    notice(media.micError(err));
    return;
  }
  if (!call.attached) { stream.getTracks().forEach((t) => t.stop()); return; }
  const track = stream.getAudioTracks()[0];
  track.enabled = !call.muted;
  const sender = call.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  if (sender) await sender.replaceTrack(track);
  call.stream.getTracks().forEach((t) => t.stop());
  call.stream = stream;
  if (call.meter) call.meter.stop();
  call.meter = media.level(stream, (v) => {
    el.meterLevel.style.width = Math.min(100, Math.round(v * 250)) + "%";
  });
}

export function switchSpeaker(id) {
  media.choose("speaker", id);
  media.routeSpeaker(el.audio);
}

// ---------------------------------------------------------------- ending

// End `link` (a call or a text connection); `send` tells the server first; `back` is the
// text connection to go on with if a call never started.
function finish(link, { send, why, back = null }) {
  if (!link || !link.attached) return;
  link.attached = false;
  const wasOpen = link.open;
  close(link, send);
  if (link.fail) link.fail(new ApiError(0, "ended", "The call ended."));
  if (conv.link !== link) return;
  conv.link = back && back.attached ? back : null;
  conv.audio = conv.answering = false;
  heard(false);
  conv.waiting.clear();
  for (const p of conv.pending) p.li.classList.replace("sending", "unsent");
  conv.pending = [];
  for (const p of conv.photos) p.li.classList.replace("sending", "unsent");
  conv.photos = [];
  if (conv.partial) { conv.partial.classList.remove("partial"); conv.partial = null; }
  for (const t of conv.turns.values()) t.li.classList.remove("streaming");
  conv.turns.clear();
  if (link.kind === "call") {
    el.audio.srcObject = null;
    el.meterLevel.style.width = "0";
    if (wasOpen) {
      status(why && !["client_closed", "hangup"].includes(why)
        ? `Call ended (${why.replace(/_/g, " ")}).` : "Call ended.");
    } else {
      ready();
    }
  } else if (why && conv.sessionId === null) { // session.ended: the session is over
    status(`Conversation ended (${why.replace(/_/g, " ")}). Send a message to start again.`);
  }
  render();
  if (wasOpen) sessionsChanged();
}

// The connection went away without anyone asking (the server's `goodbye` says why): the
// page shows it is disconnected; the next message reconnects and resumes the session.
function lost(link, { why = "", message = "" }) {
  if (!link.attached || link.replaced) { // a call took this connection's place
    link.attached = false;
    return;
  }
  const current = conv.link === link;
  finish(link, { send: false, why });
  if (!current) return;
  conv.lost = true;
  if (link.kind === "text") {
    status(`Disconnected${why ? ` (${why.replace(/_/g, " ")})` : ""}. Send a message to reconnect.`);
  }
  if (message) notice(message);
  render();
}

export function hangUp() {
  finish(inCall(), { send: true });
  el.callButton.focus();
}

/** Leave the conversation (signing out, leaving the page, another assistant). */
export function leave() {
  if (conv.link) finish(conv.link, { send: true });
}

function ready() {
  const a = conv.assistant;
  const call = media.micStatus().ok ? ", or call" : "";
  status(a ? `Type a message to ${a.name}${call}.` : "Add an assistant to talk to it.", ready);
}

function talking() {
  const call = media.micStatus().ok ? " Press Call to talk by voice." : "";
  status(`Talking with ${conv.assistant.name}.${call}`, talking);
}

/** Talk to `assistant` from now on (null: nobody); another one starts a new conversation. */
export function useAssistant(assistant) {
  if (conv.assistant && assistant && conv.assistant.assistant_id === assistant.assistant_id) {
    conv.assistant = assistant; // renamed, perhaps
    render();
    return;
  }
  leave();
  conv = fresh(assistant);
  clearLog();
  ready();
  render();
}

// for people debugging in the console, and for the page's tests
export const inspect = {
  audioStats: () => audioStats(inCall()),
  get activity() { return activity(); },
  get activities() { return activities.slice(); },
  get sessionId() { return conv.sessionId; },
  get events() { return conv.events.slice(); },
  get micEnabled() {
    const call = inCall();
    return call && call.stream ? call.stream.getAudioTracks().every((t) => t.enabled) : null;
  },
};
