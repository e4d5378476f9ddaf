// The page's start: tabs, the API key field, the server's status and the first load of the voices.
import { apiKey, getJson } from "./api.js";
import { setUp as setUpClone } from "./clone.js";
import { setUp as setUpDialogue } from "./dialogue.js";
import { setUp as setUpLive } from "./live.js";
import { setUp as setUpSpeak } from "./speak.js";
import { loadVoices, setUp as setUpVoices } from "./voices.js";

function selectTab(tab) {
  for (const other of document.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
  }
}

// Tabs follow the ARIA pattern: click or Enter to open, arrow keys, Home and End to move.
function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const target = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (target === undefined) return;
      event.preventDefault();
      const next = tabs[(target + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  });
}

async function showStatus() {
  const status = document.getElementById("status");
  const note = document.getElementById("status-note");
  try {
    const health = await getJson("/health");
    status.textContent = `Server ${health.status}: ${health.model_path} on ${health.device}, `
      + `${health.voices_available} voices, version ${health.version}`
      + (health.error ? `. Error: ${health.error}` : "");
    status.dataset.status = health.status;
    note.textContent = health.note ?? "";
    note.hidden = !health.note;
    if (health.status === "loading") setTimeout(showStatus, 2000);
  } catch (error) {
    status.textContent = `The server did not answer: ${error.message}`;
  }
}

async function showVoices() {
  const problem = document.getElementById("page-error");
  try {
    await loadVoices();
    problem.textContent = "";
  } catch (error) {
    problem.textContent = `The voices could not be loaded: ${error.message}`;
  }
}

function setUpKey() {
  const field = document.getElementById("api-key");
  field.value = apiKey.get();
  field.addEventListener("change", () => {
    apiKey.set(field.value.trim());
    showVoices();
  });
}

setUpTabs();
setUpKey();
setUpSpeak();
setUpClone();
setUpDialogue();
setUpLive();
setUpVoices();
showStatus();
showVoices();
