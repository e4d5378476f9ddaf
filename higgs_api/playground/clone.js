// The Clone tab: a reference clip from a file or the microphone, saved as a named voice
// (POST /upload-voice) or used once (POST /v1/audio/speech with ref_audio).
import { request } from "./api.js";
import { blobToBase64, recordingAsWav } from "./audio.js";
import { speak } from "./speak.js";
import { run, showMessage } from "./ui.js";
import { loadVoices } from "./voices.js";

let recording = null;  // the last microphone recording, as a WAV file
let recorder = null;

function reference(form) {
  const file = form.elements.file.files[0];
  if (file) return { blob: file, filename: file.name };
  if (recording) return { blob: recording, filename: "recording.wav" };
  throw new Error("choose an audio file or record one first");
}

async function toggleRecording(button, state) {
  if (recorder) {
    recorder.stop();
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", async () => {
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    button.textContent = "Record from the microphone";
    try {
      // The server reads WAV, MP3 and FLAC; browsers record webm or ogg.
      recording = await recordingAsWav(new Blob(chunks, { type: chunks[0]?.type }));
      document.getElementById("clone-form").elements.file.value = "";
      state.textContent = "Recorded: this clip will be used.";
    } catch (error) {
      state.textContent = `The recording could not be read: ${error.message}`;
    }
  });
  recorder.start();
  button.textContent = "Stop recording";
  state.textContent = "Recording…";
}

export function setUp() {
  const form = document.getElementById("clone-form");
  const panel = document.getElementById("clone");
  const state = document.getElementById("record-state");
  const button = document.getElementById("record");
  button.addEventListener("click", () => toggleRecording(button, state).catch((error) => {
    state.textContent = `The microphone is not available: ${error.message}`;
  }));
  form.elements.file.addEventListener("change", () => {
    recording = null;
    state.textContent = "";
  });
  document.getElementById("clone-save").addEventListener("click", () => run(panel, async (result) => {
    const { blob, filename } = reference(form);
    const upload = new FormData();
    upload.append("file", blob, filename);
    for (const field of ["name", "description", "transcript"]) {
      if (form.elements[field].value.trim()) upload.append(field, form.elements[field].value);
    }
    const voice = await (await request("/upload-voice", { method: "POST", body: upload })).json();
    await loadVoices();
    showMessage(result, `Saved the voice ${voice.name} (${voice.duration.toFixed(1)} s); it is in every voice picker now.`);
  }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(panel, async (result) => {
      const { blob } = reference(form);
      const body = { input: form.elements.text.value, ref_audio: await blobToBase64(blob) };
      if (form.elements.transcript.value.trim()) body.ref_text = form.elements.transcript.value;
      await speak(result, body);
    });
  });
}
