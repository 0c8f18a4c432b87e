// Microphones and speakers: which exist, which one to use, the microphone's level, and bars
// drawn from the assistant's voice. Web Audio only; nothing is recorded or sent from here.

const PREFS = window.localStorage; // device choices outlive the tab, like a phone's settings

export const devices = { inputs: [], outputs: [], known: false };

let context = null;
/** The page's one AudioContext, made on first use (a click has happened by then). */
function audio() {
  if (!context || context.state === "closed") {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    context = new Ctx();
  }
  if (context.state === "suspended") context.resume().catch(() => { /* resumes on the next gesture */ });
  return context;
}

export const canSetSpeaker = () => typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

const callsPossible = () => Boolean(window.RTCPeerConnection && navigator.mediaDevices
  && navigator.mediaDevices.getUserMedia);

export async function refreshDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) {
    devices.known = true;
    return;
  }
  try {
    const found = await navigator.mediaDevices.enumerateDevices();
    devices.inputs = found.filter((d) => d.kind === "audioinput");
    devices.outputs = found.filter((d) => d.kind === "audiooutput");
  } catch {
    devices.inputs = devices.outputs = [];
  }
  devices.known = true;
}

/** Whether a call can start: {ok, label (the call button's), why (a hint beside it)}. */
export function micStatus() {
  if (!callsPossible()) {
    return { ok: false, label: "Calls unavailable",
             why: window.isSecureContext === false
               ? "Calls need a secure page: open it over https (or on localhost). You can still type."
               : "This browser cannot make calls. You can still type." };
  }
  if (devices.known && devices.inputs.length === 0) {
    return { ok: false, label: "No microphone",
             why: "No microphone was found, so calls are off: plug one in to call. You can still type." };
  }
  return { ok: true, label: "", why: "" };
}

export function micError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was blocked. Allow it in the browser's site settings, then call again. You can still type.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in, then call again. You can still type.";
    case "NotReadableError":
      return "The microphone is busy in another app. Close it, then call again.";
    default:
      return "Could not open the microphone: " + ((err && err.message) || err);
  }
}

export const chosenMic = () => PREFS.getItem("vagent.mic") || "";
export const chosenSpeaker = () => PREFS.getItem("vagent.speaker") || "";
export function choose(kind, id) {
  const key = kind === "mic" ? "vagent.mic" : "vagent.speaker";
  if (id) PREFS.setItem(key, id); else PREFS.removeItem(key);
}

/** The chosen microphone, or the default one if it is gone. */
export async function openMic() {
  const id = chosenMic();
  if (id && devices.inputs.some((d) => d.deviceId === id)) {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: { deviceId: { exact: id } } });
    } catch { /* unplugged since: the default one */ }
  }
  return navigator.mediaDevices.getUserMedia({ audio: true });
}

/** Whether the browser cancels echo on `stream`'s microphone (getUserMedia asks for it by
 * default); undefined where the browser does not say. */
export function echoCancelled(stream) {
  const track = stream.getAudioTracks()[0];
  const settings = track && track.getSettings ? track.getSettings() : {};
  return typeof settings.echoCancellation === "boolean" ? settings.echoCancellation : undefined;
}

/** Play the assistant through the chosen speaker, where the browser lets a page choose. */
export async function routeSpeaker(element) {
  if (!canSetSpeaker()) return;
  const id = chosenSpeaker();
  try {
    await element.setSinkId(devices.outputs.some((d) => d.deviceId === id) ? id : "");
  } catch { /* the default output plays it */ }
}

/** Fill a <select> with devices: the system default first, then each one by name. */
export function fillPicker(select, list, chosen, noun) {
  const options = [new Option(`Default ${noun}`, "")];
  list.filter((d) => d.deviceId && d.deviceId !== "default").forEach((d, i) => {
    options.push(new Option(d.label || `${noun.charAt(0).toUpperCase() + noun.slice(1)} ${i + 1}`, d.deviceId));
  });
  select.replaceChildren(...options);
  select.value = options.some((o) => o.value === chosen) ? chosen : "";
}

/** The level of `stream` (0..1) on every frame; returns {stop(), peak}. */
export function level(stream, onLevel) {
  const meter = { peak: 0, stop: () => {} };
  try {
    const ctx = audio();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 512;
    const source = ctx.createMediaStreamSource(stream);
    source.connect(analyser);
    const data = new Uint8Array(analyser.fftSize);
    let raf = 0;
    const tick = () => {
      analyser.getByteTimeDomainData(data);
      let peak = 0;
      for (const v of data) peak = Math.max(peak, Math.abs(v - 128));
      const value = peak / 128;
      meter.peak = Math.max(meter.peak, value);
      onLevel(value);
      raf = requestAnimationFrame(tick);
    };
    tick();
    meter.stop = () => { cancelAnimationFrame(raf); source.disconnect(); };
  } catch { /* the meter is a nicety */ }
  return meter;
}

/** Bars drawn on `canvas` from the frequencies of `stream` (the assistant's voice); returns
 * {stop(), peak} where peak is the loudest bar seen (0..1). */
export function bars(stream, canvas) {
  const viz = { peak: 0, stop: () => {} };
  const g = canvas.getContext("2d");
  if (!g) return viz;
  try {
    const ctx = audio();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 256;
    analyser.smoothingTimeConstant = 0.7;
    const source = ctx.createMediaStreamSource(stream);
    source.connect(analyser); // not to the destination: the <audio> element plays it
    const data = new Uint8Array(analyser.frequencyBinCount);
    const count = 16;
    const color = getComputedStyle(canvas).color || "#2557d6";
    let raf = 0;
    const draw = () => {
      analyser.getByteFrequencyData(data);
      const { width, height } = canvas;
      g.clearRect(0, 0, width, height);
      g.fillStyle = color;
      const step = width / count;
      // speech lives in the lower bins: spread the first half of them over the bars
      const per = Math.max(1, Math.floor(data.length / 2 / count));
      for (let i = 0; i < count; i++) {
        let sum = 0;
        for (let j = 0; j < per; j++) sum += data[i * per + j];
        const v = sum / per / 255;
        viz.peak = Math.max(viz.peak, v);
        const h = Math.max(2, v * height);
        g.fillRect(i * step + 1, (height - h) / 2, step - 2, h);
      }
      raf = requestAnimationFrame(draw);
    };
    draw();
    viz.stop = () => {
      cancelAnimationFrame(raf);
      source.disconnect();
      g.clearRect(0, 0, canvas.width, canvas.height);
    };
  } catch { /* the bars are a nicety */ }
  return viz;
}
