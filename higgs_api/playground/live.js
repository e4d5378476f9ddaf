// The Live tab: a live session over the WebSocket route. The text goes out word by word, as a
// language model would write it; each segment's audio plays as it arrives; Stop is a barge-in.
import { apiKey } from "./api.js";
import { PcmPlayer, SAMPLE_RATE, wavBlob } from "./audio.js";
import { element, settings, showAudio, showProgress } from "./ui.js";

const LIVE_PATH = "/v1/audio/speech/stream";

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${LIVE_PATH}`;
}

class LiveRun {
  constructor(panel, { text, voice, wordsPerSecond }) {
    this.panel = panel;
    this.result = panel.querySelector(".result");
    this.rows = document.getElementById("live-segments");
    this.words = text.split(/(?<=\s)/);  // each word keeps the space after it
    this.delay = 1000 / wordsPerSecond;
    this.voice = voice;
    this.player = new PcmPlayer();
    this.started = performance.now();
    this.firstAudio = null;
    this.segment = null;  // the row of the segment being heard
    this.done = new Promise((resolve, reject) => { this.finish = resolve; this.fail = reject; });
  }

  start() {
    const { scene_prompt, response_format, ...sampling } = settings();
    this.socket = new WebSocket(socketUrl());
    this.socket.binaryType = "arraybuffer";
    this.socket.addEventListener("open", () => this.send({
      type: "session.config", ...sampling, ...(this.voice ? { voice: this.voice } : {}),
      ...(scene_prompt ? { scene_prompt } : {}), ...(apiKey.get() ? { api_key: apiKey.get() } : {}),
    }));
    this.socket.addEventListener("message", (message) => this.receive(message.data));
    this.socket.addEventListener("close", (event) => {
      if (event.code === 1000) this.finish();
      else this.fail(new Error(this.lastError ?? `the live session closed (${event.code} ${event.reason})`));
    });
    return this.done;
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  async sendText() {
    for (const word of this.words) {
      if (this.stopped) return;
      this.send({ type: "input.text", text: word });
      await new Promise((resolve) => setTimeout(resolve, this.delay));
    }
    if (!this.stopped) this.send({ type: "input.done" });
  }

  stop() {
    this.stopped = true;
    this.player.stop();
    this.send({ type: "response.cancel" });
  }

  receive(data) {
    if (data instanceof ArrayBuffer) return this.audio(new Uint8Array(data));
    const event = JSON.parse(data);
    if (event.type === "session.created") this.sendText();
    else if (event.type === "segment.start") this.startSegment(event);
    else if (event.type === "segment.done") this.endSegment(event);
    else if (event.type === "response.cancelled") this.cancelled();
    else if (event.type === "session.done") this.totals = event;
    else if (event.type === "error") this.error(event);
  }

  startSegment(event) {
    const cells = [event.segment, event.text, "…", "", "", ""].map((value) => element("td", { textContent: String(value) }));
    this.segment = element("tr", {}, cells);
    this.segment.dataset.segment = String(event.segment);
    this.segment.startedAt = performance.now();
    this.rows.append(this.segment);
    showProgress(this.result, `Speaking segment ${event.segment + 1}`);
  }

  audio(bytes) {
    if (this.stopped || !this.segment) return;
    this.firstAudio ??= performance.now();
    if (!this.segment.dataset.firstAudio) {
      const after = performance.now() - this.segment.startedAt;
      this.segment.dataset.firstAudio = String(after);
      this.segment.cells[2].textContent = `${Math.round(after)} ms`;
    }
    this.player.push(bytes);
  }

  endSegment(event) {
    const row = this.rows.querySelector(`tr[data-segment="${event.segment}"]`);
    row.dataset.finish = event.finish_reason;
    row.cells[3].textContent = `${event.audio_seconds.toFixed(2)} s`;
    row.cells[4].textContent = `${event.usage.prefill_tokens} / ${event.usage.prompt_tokens}`;
    row.cells[5].textContent = event.finish_reason;
  }

  cancelled() {
    this.result.dataset.cancelled = "true";
    showProgress(this.result, "Stopped; the session ends.");
    this.socket.close(1000);
  }

  error(event) {
    this.lastError = `${event.code}: ${event.message}`;
    this.result.append(element("p", { className: "error", role: "alert", textContent: this.lastError }));
  }

  show() {
    const samples = this.player.samples();
    const duration = samples.length / SAMPLE_RATE;
    showAudio(this.result, {
      blob: wavBlob(samples, SAMPLE_RATE), name: "live", format: "wav", duration,
      firstAudio: this.firstAudio === null ? 0 : (this.firstAudio - this.started) / 1000,
      total: (performance.now() - this.started) / 1000,
      finishReason: this.stopped ? "cancelled" : "done",
    });
  }
}

export function setUp() {
  const panel = document.getElementById("live");
  const form = document.getElementById("live-form");
  const start = form.querySelector("button[type=submit]");
  const stop = document.getElementById("live-stop");
  const result = panel.querySelector(".result");
  let current = null;
  stop.addEventListener("click", () => current?.stop());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    document.getElementById("live-segments").replaceChildren();
    Object.keys(result.dataset).forEach((key) => delete result.dataset[key]);
    result.dataset.state = "busy";
    result.replaceChildren(element("p", { className: "progress", textContent: "Connecting…" }));
    current = new LiveRun(panel, {
      text: fields.get("text"), voice: fields.get("voice"), wordsPerSecond: Number(fields.get("words_per_second")),
    });
    start.disabled = true;
    stop.disabled = false;
    try {
      await current.start();
      current.show();
      if (current.stopped) result.dataset.cancelled = "true";
    } catch (error) {
      result.dataset.state = "error";
      result.replaceChildren(element("p", { className: "error", role: "alert", textContent: error.message }));
    } finally {
      start.disabled = false;
      stop.disabled = true;
      current = null;
    }
  });
}
