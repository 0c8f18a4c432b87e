// The two ways to a session: a WebSocket to /ws (typed) and a WebRTC call (POST /webrtc/offer,
// events on its "events" data channel). A link is {kind: "text"|"call", open, ws | pc, dc, …};
// what its events mean is talk.js's business.

import { ApiError, request, tokens } from "./api.js";

// A session the server no longer resumes: talk in a new one instead.
export const RESUME_REFUSED = new Set(["session_expired", "session_not_found", "session_active"]);

function wsUrl(assistantId, sessionId) {
  const q = new URLSearchParams({ token: tokens.access || "", assistant_id: assistantId });
  if (sessionId) q.set("session_id", sessionId);
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws?${q}`;
}

/** One WebSocket to the session (`sessionId` resumes it): resolves to the server's `session`
 * message; a refusal (an error message, then a close 4000 + status) rejects with the API's
 * error. Later messages go to `onEvent`, and a close nobody asked for to `onLost`. */
export function connectText(link, assistantId, sessionId, { onEvent, onLost }) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(assistantId, sessionId));
    let opened = false;
    let refusal = null;
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return; // no audio was asked for
      if (opened) { onEvent(e.data); return; }
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      if (m.type === "session") {
        opened = true;
        link.ws = ws;
        resolve(m);
      } else if (m.type === "error") {
        refusal = m;
      }
    };
    ws.onclose = (e) => {
      if (opened) { onLost(); return; }
      reject(refusal ? new ApiError(e.code >= 4000 ? e.code - 4000 : 0, refusal.code, refusal.message)
        : new ApiError(0, "network", "Cannot reach the server. Check the connection and try again."));
    };
  });
}

export function iceGathered(pc, ms) {
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

/** POST the call's offer, resuming `resume` if the server still can; its answer. */
export async function offer(pc, assistantId, resume, echoCancelled) {
  const body = { sdp: pc.localDescription.sdp, type: "offer", assistant_id: assistantId };
  // Whether the browser cancels its speaker's echo on this microphone: if not, the server does.
  if (typeof echoCancelled === "boolean") body.echo_cancelled = echoCancelled;
  for (let tries = 0; ; tries++) {
    try {
      return await request("POST", "/webrtc/offer", resume ? { ...body, session_id: resume } : body);
    } catch (err) {
      if (tries >= 2 || !resume || !RESUME_REFUSED.has(err.code)) throw err;
      if (err.code === "session_active" && tries === 0) await new Promise((r) => setTimeout(r, 1000));
      else resume = null;
    }
  }
}

/** Close a link's transport and free what it holds; `send` says goodbye first (`hangup`). */
export function close(link, send = false) {
  if (link.kind === "text") {
    if (link.ws && link.ws.readyState <= WebSocket.OPEN) {
      link.ws.onclose = null;
      link.ws.close(1000);
    }
    return;
  }
  clearTimeout(link.timer);
  if (link.meter) link.meter.stop();
  if (link.viz) link.viz.stop();
  if (link.stream) link.stream.getTracks().forEach((t) => t.stop());
  const shut = () => { try { if (link.pc) link.pc.close(); } catch { /* closed */ } };
  if (send && link.dc && link.dc.readyState === "open") {
    try { link.dc.send(JSON.stringify({ type: "hangup" })); } catch { /* closing */ }
    setTimeout(shut, 300); // let the hangup leave before the transport closes
  } else {
    shut();
  }
}

/** Figures of a call's received audio (the peer connection's statistics) and its meters. */
export async function audioStats(call) {
  if (!call || !call.pc) return null;
  const report = await call.pc.getStats();
  let inbound = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") inbound = s;
  });
  return inbound && {
    packetsReceived: inbound.packetsReceived || 0,
    bytesReceived: inbound.bytesReceived || 0,
    totalAudioEnergy: inbound.totalAudioEnergy || 0,
    totalSamplesReceived: inbound.totalSamplesReceived || 0,
    micPeak: call.meter ? call.meter.peak : 0,
    voicePeak: call.viz ? call.viz.peak : 0,
  };
}
