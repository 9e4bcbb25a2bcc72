// Text generation over a step backend, following runtime/generation.py for one sequence: feed the prompt one token
// at a time, then sample, stream, feed back. A stop token (or the tokenizer's end-of-document id) ends generation
// without being added; a stop string ends it after the token that completed it and is cut from the text.
// Pure JS: shared by Node and the browser.

import { Rng, sampleToken, samplingParams } from "./sampling.js";

export class GenerationError extends Error {
  constructor(message) {
    super(message);
    this.name = "GenerationError";
    this.exitCode = 2;
  }
}

const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/** Token bytes in, text out as soon as it is whole UTF-8 characters that cannot begin a stop string. */
export class TextStream {
  constructor(stopStrings = []) {
    this.decoder = new TextDecoder("utf-8");
    this.stops = stopStrings.filter((s) => s);
    this.held = "";
    this.text = "";
    this.stopped = false;
  }

  /** The newly releasable text; sets `stopped` (and drops everything after) once a stop string appears. */
  push(bytes, final = false) {
    this.held += this.decoder.decode(bytes, { stream: !final });
    const found = this.stops.map((s) => this.held.indexOf(s)).filter((i) => i >= 0);
    let piece;
    if (found.length) {
      piece = this.held.slice(0, Math.min(...found));
      this.held = "";
      this.stopped = true;
    } else {
      const keep = final ? 0 : this.stopPrefixLength();
      piece = this.held.slice(0, this.held.length - keep);
      this.held = this.held.slice(this.held.length - keep);
    }
    this.text += piece;
    return piece;
  }

  /** Release what is held back (an unfinished character becomes U+FFFD). */
  close() {
    return this.stopped ? "" : this.push(new Uint8Array(0), true);
  }

  stopPrefixLength() {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.held.length); k > best; k--) {
        if (this.held.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}

/** Generates with a backend ({vocabSize, freshState(), step(tokens, state)}) and the package's tokenizer (or null). */
export class Generator {
  constructor(backend, tokenizer = null, tokenizerProblem = null) {
    this.backend = backend;
    this.tokenizer = tokenizer;
    this.tokenizerProblem = tokenizerProblem;
  }

  /** Token ids of a prompt given as text or as an array of ids. */
  encode(prompt) {
    if (typeof prompt === "string") {
      if (!this.tokenizer) {
        throw new GenerationError(this.tokenizerProblem ?? "this package has no tokenizer: give the prompt as token ids");
      }
      return this.tokenizer.encode(prompt);
    }
    return Array.from(prompt, Number);
  }

  /**
   * Feed token ids: {logits (Float32Array [vocab]) after the last one, state after all}.
   * `onStep(logits, tokenId)` sees the logits of every step (for dumps and tests).
   */
  async prefill(ids, state = null, onStep = null) {
    if (!ids.length) throw new GenerationError("the prompt is empty: the model needs at least one token to continue from");
    state ??= this.backend.freshState(1);
    let logits = null;
    for (const id of ids) {
      ({ logits, state } = await this.backend.step([id], state));
      onStep?.(logits, id);
    }
    return { logits, state };
  }

  /**
   * Continue `prompt` (text or token ids) by up to `maxTokens` tokens. Options: temperature (0 = greedy), topP,
   * topK, presencePenalty, frequencyPenalty, seed, stopTokens, stopStrings, state (continue a conversation),
   * onToken(text) for streaming, onStep(logits, tokenId) for every step's logits.
   * Returns {text, tokenIds, promptIds, state, finishReason ("stop" | "length"), stats}.
   */
  async generate(prompt, options = {}) {
    const { maxTokens = 128, seed = null, stopTokens = [], stopStrings = [], onToken = null, onStep = null } = options;
    if (!(Number.isInteger(maxTokens) && maxTokens >= 0)) throw new GenerationError(`max_tokens must be an integer >= 0, got ${maxTokens}`);
    if (stopStrings.length && !this.tokenizer) throw new GenerationError("stop strings need a tokenizer; this package has none");
    const params = samplingParams(options);
    const promptIds = this.encode(prompt);
    const vocabSize = this.backend.vocabSize;
    const started = now();
    let { logits, state } = await this.prefill(promptIds, options.state ?? null, onStep);
    const prefillSeconds = (now() - started) / 1000;
    const rng = new Rng(seed ?? undefined);
    const counts = params.usesPenalties ? new Int32Array(vocabSize) : null;
    const stream = this.tokenizer ? new TextStream(stopStrings) : null;
    const stops = new Set(stopTokens);
    if (this.tokenizer?.eosTokenId != null) stops.add(this.tokenizer.eosTokenId);
    const emit = (piece) => {
      if (piece) onToken?.(piece);
    };
    const tokenIds = [];
    let finishReason = "length";
    const decodeStarted = now();
    while (tokenIds.length < maxTokens) {
      const token = sampleToken(logits, params, rng, counts);
      if (stops.has(token)) {
        finishReason = "stop";
        break;
      }
      tokenIds.push(token);
      if (counts) counts[token] += 1;
      if (stream) emit(stream.push(this.tokenizer.decodeBytes([token])));
      ({ logits, state } = await this.backend.step([token], state));
      onStep?.(logits, token);
      if (stream?.stopped) {
        finishReason = "stop";
        break;
      }
    }
    if (stream) emit(stream.close());
    const decodeSeconds = (now() - decodeStarted) / 1000;
    return {
      text: stream ? stream.text : "",
      tokenIds,
      promptIds,
      state,
      finishReason,
      stats: {
        promptTokens: promptIds.length,
        generatedTokens: tokenIds.length,
        prefillSeconds,
        decodeSeconds,
        prefillTokensPerSecond: prefillSeconds > 0 ? promptIds.length / prefillSeconds : 0,
        decodeTokensPerSecond: decodeSeconds > 0 ? tokenIds.length / decodeSeconds : 0,
      },
    };
  }
}
