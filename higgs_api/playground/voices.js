// The Voices tab: every voice with its details, its reference audio, and deletion of uploaded ones.
// Loading the voices also refreshes the pickers of the other tabs.
import { getJson, request } from "./api.js";
import { element, fillVoicePickers, run, showMessage } from "./ui.js";

const panel = () => document.getElementById("voices");

async function playReference(name) {
  const blob = await (await request(`/voices/${encodeURIComponent(name)}/audio`)).blob();
  const player = document.getElementById("voice-player");
  URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  player.setAttribute("aria-label", `Reference audio of ${name}`);
  await player.play();
}

function row(voice) {
  const play = element("button", { type: "button", textContent: "Play" });
  play.setAttribute("aria-label", `Play the reference audio of ${voice.name}`);
  play.addEventListener("click", () => run(panel(), async (result) => {
    await playReference(voice.name);
    showMessage(result, `Playing the reference audio of ${voice.name}.`);
  }));
  const actions = [play];
  if (voice.kind === "uploaded") {
    const remove = element("button", { type: "button", textContent: "Delete" });
    remove.setAttribute("aria-label", `Delete the voice ${voice.name}`);
    remove.addEventListener("click", () => run(panel(), async (result) => {
      await request(`/voices/${encodeURIComponent(voice.name)}`, { method: "DELETE" });
      await loadVoices();
      showMessage(result, `Deleted the voice ${voice.name}.`);
    }));
    actions.push(remove);
  }
  const line = element("tr", {}, [
    element("th", { scope: "row", textContent: voice.name }),
    element("td", { textContent: voice.description }),
    element("td", { textContent: voice.kind }),
    element("td", { textContent: `${voice.duration.toFixed(1)} s` }),
    element("td", {}, actions),
  ]);
  line.dataset.voice = voice.name;
  return line;
}

export async function loadVoices() {
  const names = await getJson("/voices");
  const voices = await Promise.all(names.map((voice) => getJson(`/voices/${encodeURIComponent(voice.name)}`)));
  document.getElementById("voice-rows").replaceChildren(...voices.map(row));
  fillVoicePickers(voices);
}

export function setUp() {
  document.getElementById("voices-refresh").addEventListener("click", () => run(panel(), async (result) => {
    await loadVoices();
    showMessage(result, "Voices refreshed.");
  }));
}
