// Requests to this server's API: the API key the user typed goes along, and every error becomes an
// Error whose message is the server's own words.
const KEY_STORAGE = "higgs-playground-api-key";

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (key) => key ? localStorage.setItem(KEY_STORAGE, key) : localStorage.removeItem(KEY_STORAGE),
};

async function errorMessage(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line is all there is
  }
  const detail = body?.detail ?? body?.error?.message;
  const words = typeof detail === "string" ? detail : JSON.stringify(detail ?? response.statusText);
  return `${response.status}: ${words}`;
}

export async function request(path, options = {}) {
  const headers = new Headers(options.headers);
  if (apiKey.get()) headers.set("Authorization", `Bearer ${apiKey.get()}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postJson(path, body) {
  const response = await request(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

// Server-sent events of POST /v1/audio/speech, one parsed event at a time.
export async function* speechEvents(body) {
  const response = await request("/v1/audio/speech", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, model: "higgs-audio-v2", stream_format: "sse" }),
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    const blocks = pending.split("\n\n");
    pending = blocks.pop();
    for (const block of blocks) {
      const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("");
      if (data) yield JSON.parse(data);
    }
  }
}
