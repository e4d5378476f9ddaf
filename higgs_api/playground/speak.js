// The Speak tab, and the streamed generation it shares with one-off cloning: POST /v1/audio/speech
// as server-sent events, played as it arrives when the format is "live stream".
import { speechEvents } from "./api.js";
import { MEDIA_TYPES, PcmPlayer, SAMPLE_RATE, base64ToBytes, concat, wavBlob } from "./audio.js";
import { run, settings, showAudio, showProgress } from "./ui.js";

async function decodedSeconds(blob) {
  try {
    return (await new OfflineAudioContext(1, 1, SAMPLE_RATE).decodeAudioData(await blob.arrayBuffer())).duration;
  } catch {
    return 0;  // a format this browser cannot decode: the length stays unknown
  }
}

// `body` holds the voice fields (voice, voice_description or ref_audio/ref_text) and `input`.
export async function speak(result, body) {
  const { scene_prompt, response_format, ...sampling } = settings();
  const live = response_format === "stream";
  const player = live ? new PcmPlayer() : null;
  const parts = [];
  const started = performance.now();
  let firstAudio = null;
  let finishReason = null;
  const events = speechEvents({ ...sampling, ...body, instructions: scene_prompt, response_format: live ? "pcm" : response_format });
  for await (const event of events) {
    if (event.type === "error") throw new Error(`generation failed: ${event.error.message}`);
    if (event.type === "speech.audio.done") finishReason = event.finish_reason;
    if (event.type !== "speech.audio.delta") continue;
    const bytes = base64ToBytes(event.audio);
    firstAudio ??= performance.now();
    if (player) {
      player.push(bytes);
      showProgress(result, `Playing while generating: ${(player.endAt - player.startAt).toFixed(1)} s received`);
    } else {
      parts.push(bytes);
      showProgress(result, `Generating: ${parts.length} pieces received`);
    }
  }
  const ended = performance.now();
  if (firstAudio === null) throw new Error("the server sent no audio");
  // For the tests and the curious: how much had been heard when the last byte arrived.
  result.dataset.playedBeforeEnd = String(player ? player.playedSeconds() : 0);
  const blob = player ? wavBlob(player.samples(), SAMPLE_RATE)
    : new Blob([concat(parts, Uint8Array)], { type: MEDIA_TYPES[response_format] });
  const duration = player ? player.samples().length / SAMPLE_RATE : await decodedSeconds(blob);
  showAudio(result, {
    blob, name: "speech", format: live ? "wav" : response_format, duration, finishReason,
    firstAudio: (firstAudio - started) / 1000, total: (ended - started) / 1000,
  });
}

export function setUp() {
  const form = document.getElementById("speak-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const body = { input: fields.get("text") };
    if (fields.get("voice")) body.voice = fields.get("voice");
    else if (fields.get("voice_description").trim()) body.voice_description = fields.get("voice_description");
    run(document.getElementById("speak"), (result) => speak(result, body));
  });
}
