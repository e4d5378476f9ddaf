// What every tab shares: the generation settings, the result area (progress, errors, metrics,
// player with download) and the voice pickers.
const SETTINGS_NUMBERS = ["temperature", "top_p", "top_k", "seed", "max_new_tokens"];

export function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// The shared settings, without empty fields (the server's defaults apply to those).
export function settings() {
  const form = new FormData(document.getElementById("settings-form"));
  const values = {};
  for (const [name, value] of form) {
    if (value === "") continue;
    values[name] = SETTINGS_NUMBERS.includes(name) ? Number(value) : value;
  }
  return values;
}

// Runs one action of a panel: its buttons are disabled meanwhile and a failure is shown in words.
export async function run(panel, action) {
  const result = panel.querySelector(".result");
  const buttons = [...panel.querySelectorAll("button")];
  buttons.forEach((button) => { button.disabled = true; });
  Object.keys(result.dataset).forEach((key) => delete result.dataset[key]);
  result.dataset.state = "busy";
  result.replaceChildren(element("p", { className: "progress", textContent: "Working…" }));
  try {
    await action(result);
  } catch (error) {
    result.dataset.state = "error";
    result.replaceChildren(element("p", { className: "error", role: "alert", textContent: error.message }));
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

export function showProgress(result, text) {
  result.querySelector(".progress").textContent = text;
}

export function showMessage(result, text) {
  result.dataset.state = "done";
  result.replaceChildren(element("p", { textContent: text }));
}

const seconds = (value) => `${value.toFixed(2)} s`;

// A finished generation: metrics, a player and a download link. Times are in seconds.
export function showAudio(result, { blob, name, format, duration, firstAudio, total, finishReason }) {
  const url = URL.createObjectURL(blob);
  const facts = [
    ["Audio length", seconds(duration)],
    ["Time to first audio", seconds(firstAudio)],
    ["Total time", seconds(total)],
    ["Realtime factor", duration > 0 ? `${(total / duration).toFixed(2)} (below 1: faster than realtime)` : "n/a"],
    ["Finish reason", finishReason ?? "n/a"],
  ];
  const metrics = element("dl", { className: "metrics" },
    facts.flatMap(([term, value]) => [element("dt", { textContent: term }), element("dd", { textContent: value })]));
  result.dataset.state = "done";
  result.dataset.duration = String(duration);
  result.replaceChildren(metrics, element("audio", { controls: true, src: url }),
    element("a", { href: url, download: `${name}.${format}`, textContent: `Download (${format})` }));
}

let knownVoices = [];

// Fills every voice picker (with the voices last loaded when none are given), keeping each one's
// choice while that voice exists; a picker that held no voices yet starts at the voice of its data-default-index.
export function fillVoicePickers(voices = knownVoices) {
  knownVoices = voices;
  for (const select of document.querySelectorAll("select[data-voices]")) {
    const held = [...select.options].filter((option) => option.value).length;
    const chosen = held ? select.value : null;
    const options = voices.map((voice) => element("option", { value: voice.name, textContent: voice.name }));
    if (select.dataset.voices === "model") options.unshift(element("option", { value: "", textContent: "the model's choice" }));
    select.replaceChildren(...options);
    if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
    else if (voices[select.dataset.defaultIndex]) select.value = voices[select.dataset.defaultIndex].name;
  }
}
