// The Dialogue tab: lines with a speaker each and a voice per speaker, generated in one request by
// POST /generate/multi-speaker.
import { postJson } from "./api.js";
import { MEDIA_TYPES, base64ToBytes } from "./audio.js";
import { element, fillVoicePickers, run, settings, showAudio } from "./ui.js";

const SAMPLE_LINES = [[0, "Did you hear that the server runs on our own machine now?"], [1, "I did. And it even has a playground."]];

const speakerCount = () => document.querySelectorAll("#speakers select").length;

function addSpeaker() {
  const index = speakerCount();
  const voice = element("select", { name: `speaker${index}` });
  voice.dataset.voices = "model";
  voice.dataset.defaultIndex = String(index);
  const description = element("input", { name: `description${index}`, placeholder: "or describe the voice in words" });
  document.getElementById("speakers").append(element("div", { className: "row" }, [
    element("label", {}, [`Speaker ${index} voice `, voice]),
    element("label", {}, [`Speaker ${index} description `, description]),
  ]));
  fillVoicePickers();
  document.querySelectorAll("#lines select").forEach(fillSpeakers);
}

function fillSpeakers(select) {
  const chosen = select.value;
  select.replaceChildren(...Array.from({ length: speakerCount() }, (_, i) =>
    element("option", { value: String(i), textContent: `Speaker ${i}` })));
  if (chosen) select.value = chosen;
}

function addLine(speaker = 0, text = "") {
  const lines = document.getElementById("lines");
  const number = lines.children.length + 1;
  const who = element("select", { name: "line-speaker" });
  fillSpeakers(who);
  who.value = String(speaker);
  const remove = element("button", { type: "button", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove line ${number}`);
  const item = element("li", { className: "row" }, [
    element("label", {}, [`Line ${number} speaker `, who]),
    element("label", { className: "grow" }, [`Line ${number} text `, element("input", { name: "line-text", value: text })]),
    remove,
  ]);
  remove.addEventListener("click", () => item.remove());
  lines.append(item);
}

// One entry per speaker, or none at all (the model then picks contrasting voices).
function referenceVoices(form) {
  const voices = Array.from({ length: speakerCount() }, (_, i) => {
    const description = form.elements[`description${i}`].value.trim();
    return form.elements[`speaker${i}`].value || (description ? { description } : null);
  });
  if (voices.every((voice) => voice === null)) return undefined;
  if (voices.includes(null)) throw new Error("give every speaker a voice or a description, or none of them");
  return voices;
}

export function setUp() {
  const form = document.getElementById("dialogue-form");
  addSpeaker();
  addSpeaker();
  SAMPLE_LINES.forEach(([speaker, text]) => addLine(speaker, text));
  document.getElementById("add-speaker").addEventListener("click", addSpeaker);
  document.getElementById("add-line").addEventListener("click", () => addLine());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(document.getElementById("dialogue"), async (result) => {
      const lines = [...document.querySelectorAll("#lines li")]
        .map((line) => [line.querySelector("select").value, line.querySelector("input").value.trim()])
        .filter(([, text]) => text);
      if (!lines.length) throw new Error("write at least one line");
      const { response_format, ...options } = settings();
      const format = response_format === "stream" ? "wav" : response_format;
      const started = performance.now();
      const answer = await postJson("/generate/multi-speaker", {
        ...options, response_format: format, reference_voices: referenceVoices(form),
        text: lines.map(([speaker, text]) => `[SPEAKER${speaker}] ${text}`).join("\n"),
      });
      const total = (performance.now() - started) / 1000;
      showAudio(result, {
        blob: new Blob([base64ToBytes(answer.audio_base64)], { type: MEDIA_TYPES[format] }), name: "dialogue", format,
        duration: answer.duration, firstAudio: total, total, finishReason: answer.finish_reason,
      });
    });
  });
}
