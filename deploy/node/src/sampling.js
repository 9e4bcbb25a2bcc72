// Choosing the next token from logits, in the order of runtime/sampling.py: presence/frequency penalties, then
// greedy argmax when temperature is 0; otherwise temperature, top-k, top-p, and a draw from a seeded PRNG.
// Pure JS: shared by Node and the browser. Greedy picks the same token as the Python runtime (first maximum);
// sampled tokens come from a different generator than numpy's, so they differ from Python's for the same seed.

export class SamplingError extends Error {
  constructor(message) {
    super(message);
    this.name = "SamplingError";
    this.exitCode = 2;
  }
}

/** NaN or infinity where a model must produce finite numbers; says where it appeared. */
export class NonFiniteError extends Error {
  constructor(message) {
    super(message);
    this.name = "NonFiniteError";
    this.exitCode = 2;
  }
}

export const MAX_PENALTY = 100; // as runtime/sampling.py

/** Checked sampling settings (the ranges of runtime/sampling.py); temperature 0 = greedy, topK 0 and topP 1 = no cut. */
export function samplingParams({ temperature = 1.0, topP = 1.0, topK = 0, presencePenalty = 0, frequencyPenalty = 0 } = {}) {
  if (!(Number.isFinite(temperature) && temperature >= 0)) throw new SamplingError(`temperature must be a finite number >= 0 (0 = greedy), got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new SamplingError(`top_p must be in (0, 1], got ${topP}`);
  if (!(Number.isInteger(topK) && topK >= 0)) throw new SamplingError(`top_k must be an integer >= 0 (0 = no limit), got ${topK}`);
  for (const [name, value] of [["presence_penalty", presencePenalty], ["frequency_penalty", frequencyPenalty]]) {
    if (!(Number.isFinite(value) && Math.abs(value) <= MAX_PENALTY)) throw new SamplingError(`${name} must be a finite number in [-${MAX_PENALTY}, ${MAX_PENALTY}], got ${value}`);
  }
  return { temperature, topP, topK, presencePenalty, frequencyPenalty, usesPenalties: presencePenalty !== 0 || frequencyPenalty !== 0 };
}

function splitmix32(state) {
  return () => {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/**
 * Deterministic PRNG (xoshiro128**, seeded through splitmix32 from both 32-bit halves of the seed).
 * `random()` returns a float in [0, 1) with 53 random bits. Same seed, same sequence, in Node and in browsers.
 */
export class Rng {
  constructor(seed) {
    if (seed === undefined || seed === null) seed = Math.floor(Math.random() * 2 ** 52);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new SamplingError(`seed must be a non-negative integer, got ${seed}`);
    const mix = splitmix32((seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32), 0x27d4eb2d));
    this.s = Uint32Array.from([mix(), mix(), mix(), mix()]);
    if (this.s.every((x) => x === 0)) this.s[0] = 1;
  }

  nextUint32() {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  random() {
    const high = this.nextUint32() >>> 5; // 27 bits
    const low = this.nextUint32() >>> 6; // 26 bits
    return (high * 67108864 + low) / 9007199254740992;
  }
}

function rotl(x, k) {
  return (x << k) | (x >>> (32 - k));
}

/** Index of the first maximum (numpy's argmax). */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Indices sorted by value, highest first; ties keep the lower index first (a stable sort). */
function descendingOrder(values, indices) {
  return indices.sort((a, b) => values[b] - values[a] || a - b);
}

/**
 * One token id from `logits` (Float32Array or array of numbers); `counts[id]` = how often id was generated
 * (only read when penalties are set); `rng` an Rng.
 */
export function sampleToken(logits, params, rng, counts = null) {
  const n = logits.length;
  let bad = 0;
  for (let i = 0; i < n; i++) if (!Number.isFinite(logits[i])) bad++;
  if (bad) throw new NonFiniteError(`${bad} of ${n} logits are NaN or infinite; no token can be sampled`);
  let values = logits;
  if (counts && params.usesPenalties) {
    values = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      values[i] = logits[i] - params.presencePenalty * (counts[i] > 0 ? 1 : 0) - params.frequencyPenalty * counts[i];
    }
  }
  if (params.temperature === 0) return argmax(values);
  // top-k on the logits, then temperature
  let candidates = Array.from({ length: n }, (_, i) => i);
  if (params.topK > 0 && params.topK < n) candidates = descendingOrder(values, candidates).slice(0, params.topK);
  // subtract the largest logit before dividing, so a tiny temperature is greedy rather than an overflow
  let max = -Infinity;
  for (const i of candidates) max = Math.max(max, values[i]);
  const probs = new Float64Array(n);
  let total = 0;
  for (const i of candidates) total += probs[i] = Math.exp((values[i] - max) / params.temperature);
  for (const i of candidates) probs[i] /= total;
  // top-p: the smallest set of most likely tokens whose probability reaches p (at least one)
  let kept = candidates.filter((i) => probs[i] > 0);
  if (params.topP < 1) {
    descendingOrder(probs, kept);
    let before = 0;
    let count = 0;
    for (const i of kept) {
      if (before < params.topP) count++;
      before += probs[i];
    }
    kept = kept.slice(0, Math.max(1, count));
  }
  kept.sort((a, b) => a - b);
  let mass = 0;
  for (const i of kept) mass += probs[i];
  const target = rng.random() * mass;
  let cumulative = 0;
  for (const i of kept) {
    cumulative += probs[i];
    if (cumulative > target) return i;
  }
  return kept[kept.length - 1];
}
