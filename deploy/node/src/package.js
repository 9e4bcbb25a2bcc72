// Opening a package and stepping its graph, written against the API that onnxruntime-node and onnxruntime-web
// share (onnxruntime-common: ort.Tensor, session.run). Pure JS: the platform passes in its `ort` module, a file
// reader and a session factory; Node (node.js) and the browser (deploy/web/app.js) differ only there.

import { Generator } from "./generation.js";
import { MANIFEST_NAME, PackageError, own, parseManifest, referencedFiles } from "./manifest.js";
import { readNpz } from "./npz.js";
import { makeTokenizer } from "./tokenizers.js";

export class InputError extends Error {
  constructor(message) {
    super(message);
    this.name = "InputError";
    this.exitCode = 2;
  }
}

/**
 * A recurrent state: ort float32 tensors [batch, ...] in manifest order. Treat it as immutable: `step` returns a
 * new one, so keeping an old state and stepping it again branches the sequence.
 */
export class RecurrentState {
  constructor(tensors, batch) {
    this.tensors = tensors;
    this.batch = batch;
  }
}

/** One graph step per call on an ONNX Runtime session (either binding); implements the generator's backend. */
export class OrtStepBackend {
  constructor(ort, session, manifest, initialArrays = {}, where = "graph") {
    this.ort = ort;
    this.session = session;
    this.manifest = manifest;
    this.initialArrays = initialArrays;
    this.vocabSize = manifest.model.vocabSize;
    this.outputNames = [manifest.logitsOutput, ...manifest.state.map((e) => e.output)];
    const expectIn = [manifest.tokenInput, ...manifest.state.map((e) => e.input)];
    for (const [kind, expected, actual] of [["input", expectIn, session.inputNames], ["output", this.outputNames, session.outputNames]]) {
      const missing = expected.filter((n) => !actual.includes(n));
      const extra = actual.filter((n) => !expected.includes(n));
      if (missing.length || extra.length) {
        throw new PackageError(`${where}: graph ${kind}s do not match the manifest (differ in ${[...missing, ...extra].slice(0, 4).join(", ")})`);
      }
    }
  }

  /** A fresh state for `batch` sequences: each entry's `init` fill, or its `init_file` array in every row. */
  freshState(batch = 1) {
    const tensors = this.manifest.state.map((entry) => {
      const data = new Float32Array(batch * entry.size);
      const initial = own(this.initialArrays, entry.name) ? this.initialArrays[entry.name] : undefined;
      if (initial) {
        for (let row = 0; row < batch; row++) data.set(initial, row * entry.size);
      } else {
        data.fill(entry.init);
      }
      return new this.ort.Tensor("float32", data, [batch, ...entry.dims]);
    });
    return new RecurrentState(tensors, batch);
  }

  /** Feed one token per sequence: {logits: Float32Array [batch * vocab], state} (batch 1: logits of that row). */
  async step(tokens, state) {
    if (tokens.length !== state.batch) throw new InputError(`${tokens.length} tokens for a state of ${state.batch} sequences`);
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw new InputError(`token id ${t} at position ${i} is outside the vocabulary [0, ${this.vocabSize})`);
      }
    });
    const feeds = { [this.manifest.tokenInput]: new this.ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [tokens.length]) };
    this.manifest.state.forEach((entry, i) => {
      feeds[entry.input] = state.tensors[i];
    });
    const out = await this.session.run(feeds, this.outputNames);
    const logits = out[this.manifest.logitsOutput].data;
    return { logits, state: new RecurrentState(this.manifest.state.map((e) => out[e.output]), state.batch) };
  }
}

/** Lowercase hex sha256 of bytes (Web Crypto: Node 20+ and browsers in a secure context, e.g. localhost). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * `files` whose reads are checked against the manifest's sha256 (the browser, where nothing can be listed or
 * hashed on disk first): a file that is not listed, or whose bytes differ, is refused before it is used.
 */
export function hashCheckedFiles(files, manifest) {
  const checked = async (rel, bytes) => {
    const want = own(manifest.files, rel) ? manifest.files[rel] : undefined;
    if (typeof want !== "string") throw new PackageError(`${files.describe(rel)}: not listed in manifest.json files (its hash cannot be checked)`);
    if ((await sha256Hex(bytes)) !== want) throw new PackageError(`${files.describe(rel)}: sha256 does not match manifest.json (file changed or corrupt)`);
    return bytes;
  };
  return {
    ...files,
    readBytes: async (rel, limit) => checked(rel, await files.readBytes(rel, limit)),
    readText: async (rel, limit) => new TextDecoder().decode(await checked(rel, await files.readBytes(rel, limit))),
  };
}

/** Text of a file of at most `limit` bytes (the Node reader refuses before reading; others are checked after). */
async function boundedText(files, rel, limit) {
  const bytes = await files.readBytes(rel, limit);
  if (bytes.length > limit) throw new PackageError(`${files.describe(rel)}: larger than ${limit / 1024 ** 2} MiB; refusing to read it`);
  return new TextDecoder().decode(bytes);
}

/**
 * Open a package with platform hooks:
 *   files.describe(rel)   -> how to name the file in messages (a path or URL)
 *   files.readText(rel)   -> Promise<string>; files.readBytes(rel) -> Promise<Uint8Array>
 *     (both reject with a PackageError naming the file when it is missing)
 *   files.check(manifest) -> optional Promise: the package's own checks before anything else is read (Node: no
 *     links, nothing unlisted, hashes); files.hashReads: true to check every read against the manifest (browser)
 *   createSession(manifest, files) -> Promise<ort.InferenceSession> for graphs.step (with its external data)
 * Returns {manifest, tokenizer, tokenizerProblem, backend, generator, session}.
 */
export async function openPackage({ ort, files: rawFiles, createSession }) {
  const manifestName = rawFiles.describe(MANIFEST_NAME);
  const manifest = parseManifest(await rawFiles.readText(MANIFEST_NAME), manifestName);
  if (rawFiles.check) await rawFiles.check(manifest);
  const files = rawFiles.hashReads ? hashCheckedFiles(rawFiles, manifest) : rawFiles;
  if (files.exists) {
    for (const rel of referencedFiles(manifest)) {
      if (!(await files.exists(rel))) throw new PackageError(`${files.describe(rel)}: listed in the manifest but missing`);
    }
  }
  let tokenizer = null;
  let tokenizerProblem = null;
  if (manifest.tokenizer.kind === "hf") {
    tokenizerProblem = `${manifestName}: tokenizer kind "hf" (Hugging Face tokenizer.json) is not supported by the JS runtime; give the prompt as token ids`;
  } else {
    tokenizer = await makeTokenizer(manifest.tokenizer, async (rel, limit) => [await boundedText(files, rel, limit), files.describe(rel)], manifestName);
  }
  const initialArrays = Object.create(null);
  const npzCache = new Map(); // keyed by package-supplied names: a Map has no inherited keys
  for (const entry of manifest.state) {
    if (!entry.initFile) continue;
    const where = files.describe(entry.initFile);
    try {
      // no member may be larger than the largest state array (plus its .npy header): checked before inflating
      const cap = Math.max(...manifest.state.map((e) => e.size)) * 8 + 65536;
      if (!npzCache.has(entry.initFile)) npzCache.set(entry.initFile, await readNpz(await files.readBytes(entry.initFile), cap));
    } catch (err) {
      if (err instanceof PackageError) throw err;
      throw new PackageError(`${where}: cannot read the initial state (${err.message})`);
    }
    const arrays = npzCache.get(entry.initFile);
    const array = own(arrays, entry.name) ? arrays[entry.name] : undefined;
    if (!array) throw new PackageError(`${where}: has no array ${entry.name}`);
    if (array.shape.join(",") !== entry.dims.join(",")) {
      throw new PackageError(`${where}: array ${entry.name} has shape [${array.shape}], the manifest says [${entry.dims}]`);
    }
    initialArrays[entry.name] = array.data;
  }
  const session = await createSession(manifest, files);
  const backend = new OrtStepBackend(ort, session, manifest, initialArrays, files.describe(manifest.graphs.step.path));
  return { manifest, tokenizer, tokenizerProblem, backend, session, generator: new Generator(backend, tokenizer, tokenizerProblem) };
}
