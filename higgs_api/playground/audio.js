// Audio in the browser: streamed 16-bit PCM played with the Web Audio API as it arrives, WAV files
// built from samples, and base64 both ways.
export const SAMPLE_RATE = 24000;
export const MEDIA_TYPES = { wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", opus: "audio/ogg", aac: "audio/aac" };

export class PcmPlayer {
  constructor() {
    this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
    this.chunks = [];
    this.carry = null;  // a chunk may end in the middle of a 2-byte sample
    this.startAt = null;
    this.endAt = 0;
    this.scheduled = new Set();  // sources not yet played out
  }

  push(bytes) {
    if (this.carry) {
      bytes = concat([this.carry, bytes], Uint8Array);
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes.slice(-1);
      bytes = bytes.slice(0, -1);
    }
    if (!bytes.length) return;
    const ints = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    const samples = Float32Array.from(ints, (value) => value / 32768);
    this.chunks.push(samples);
    const buffer = this.context.createBuffer(1, samples.length, SAMPLE_RATE);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    // Each chunk starts where the previous one ends; after a stall, a little later than now.
    const at = Math.max(this.endAt, this.context.currentTime + 0.05);
    this.startAt ??= at;
    source.start(at);
    this.scheduled.add(source);
    source.addEventListener("ended", () => this.scheduled.delete(source));
    this.endAt = at + buffer.duration;
  }

  // Silences everything scheduled (a barge-in): the next chunk plays at once.
  stop() {
    for (const source of this.scheduled) source.stop();
    this.scheduled.clear();
    this.endAt = 0;
  }

  // Seconds of audio the listener has heard so far.
  playedSeconds() {
    return this.startAt === null ? 0 : Math.max(0, this.context.currentTime - this.startAt);
  }

  samples() {
    return concat(this.chunks, Float32Array);
  }
}

export function concat(parts, Type) {
  const out = new Type(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export function wavBlob(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);  // PCM
  view.setUint16(22, 1, true);  // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((value, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, value)) * 32767, true));
  return new Blob([view], { type: "audio/wav" });
}

// A microphone recording (webm/ogg, which the server does not read) as a mono WAV file.
export async function recordingAsWav(blob) {
  const context = new OfflineAudioContext(1, 1, SAMPLE_RATE);
  const decoded = await context.decodeAudioData(await blob.arrayBuffer());
  return wavBlob(decoded.getChannelData(0), decoded.sampleRate);
}

export function base64ToBytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export async function blobToBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
