// manifest.json (format_version 1, docs/manifest.md) parsed and checked. Pure JS: shared by Node and the browser.

export const FORMAT_VERSION = 1;
export const MANIFEST_NAME = "manifest.json";
export const STEP_GRAPH = "step";
const TOKENIZER_KINDS = new Set(["world", "hf", "bytes", "none"]);

/** A package that cannot be used; `message` is one line that starts with the file concerned. */
export class PackageError extends Error {
  constructor(message) {
    super(message);
    this.name = "PackageError";
    this.exitCode = 2;
  }
}

function checkRelative(path, where, what) {
  if (typeof path !== "string" || !path) throw new PackageError(`${where}: ${what} must be a non-empty path`);
  if (path.startsWith("/") || path.split("/").includes("..") || path.includes("\\")) {
    throw new PackageError(`${where}: ${what} ${JSON.stringify(path)} must be relative, '/'-separated and without '..'`);
  }
  return path;
}

function need(object, key, type, where) {
  const value = object?.[key];
  const ok = type === "array" ? Array.isArray(value)
    : type === "object" ? value !== null && typeof value === "object" && !Array.isArray(value)
      : type === "int" ? Number.isInteger(value) : typeof value === type;
  if (!ok) throw new PackageError(`${where}: malformed manifest (field ${JSON.stringify(key)} must be ${type === "int" ? "an integer" : `a ${type}`})`);
  return value;
}

/**
 * Parse manifest text. `where` names the file in error messages (e.g. "pkg/manifest.json").
 * Returns a plain object with the fields runtimes use; unknown graphs (e.g. "prefill") are kept but ignored.
 */
export function parseManifest(text, where = MANIFEST_NAME) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new PackageError(`${where}: unreadable manifest (${err.message})`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new PackageError(`${where}: unreadable manifest (not a JSON object)`);
  }
  if (data.format_version !== FORMAT_VERSION) {
    throw new PackageError(`${where}: format_version ${JSON.stringify(data.format_version ?? null)} is not supported (this runtime reads ${FORMAT_VERSION})`);
  }
  const model = need(data, "model", "object", where);
  const vocabSize = need(model, "vocab_size", "int", where);
  const graphs = need(data, "graphs", "object", where);
  if (!(STEP_GRAPH in graphs)) {
    throw new PackageError(`${where}: the manifest lists no "step" graph (has: ${Object.keys(graphs).join(", ") || "none"})`);
  }
  const stepInfo = need(graphs, STEP_GRAPH, "object", where);
  const step = {
    path: checkRelative(stepInfo.path, where, "graphs.step.path"),
    precision: stepInfo.precision ?? "fp32",
    opset: stepInfo.opset ?? null,
    externalData: stepInfo.external_data == null ? null : checkRelative(stepInfo.external_data, where, "graphs.step.external_data"),
  };
  const state = need(data, "state", "array", where).map((entry, i) => {
    const at = `${where}: state[${i}]`;
    const name = need(entry, "name", "string", at);
    const shape = need(entry, "shape", "array", at);
    if (shape[0] !== "batch" || !shape.slice(1).every((d) => Number.isInteger(d) && d > 0)) {
      throw new PackageError(`${at} (${name}): shape must be ["batch", positive ints...], got ${JSON.stringify(shape)}`);
    }
    const dtype = need(entry, "dtype", "string", at);
    if (dtype !== "float32") throw new PackageError(`${at} (${name}): dtype ${dtype} is not supported (format 1 uses float32)`);
    const init = entry.init ?? 0;
    if (typeof init !== "number") throw new PackageError(`${at} (${name}): init must be a number`);
    return {
      name,
      input: need(entry, "input", "string", at),
      output: need(entry, "output", "string", at),
      shape,
      dims: shape.slice(1),
      size: shape.slice(1).reduce((a, b) => a * b, 1),
      dtype,
      init,
      initFile: entry.init_file == null ? null : checkRelative(entry.init_file, at, "init_file"),
    };
  });
  const tok = need(data, "tokenizer", "object", where);
  const kind = need(tok, "kind", "string", where);
  if (!TOKENIZER_KINDS.has(kind)) throw new PackageError(`${where}: unknown tokenizer kind ${JSON.stringify(kind)}`);
  const tokenizer = {
    kind,
    files: (tok.files ?? []).map((f) => checkRelative(f, where, "tokenizer.files[]")),
    eosTokenId: tok.eos_token_id ?? null,
  };
  return {
    formatVersion: data.format_version,
    model: { ...model, vocabSize },
    graphs: { step },
    otherGraphs: Object.keys(graphs).filter((g) => g !== STEP_GRAPH),
    state,
    tokenizer,
    files: data.files ?? {},
    tokenInput: data.token_input ?? "token",
    logitsOutput: data.logits_output ?? "logits",
    raw: data,
  };
}

/** Every file the runtime will open: graph, external data, tokenizer files, init files (relative paths). */
export function referencedFiles(manifest) {
  const files = [manifest.graphs.step.path];
  if (manifest.graphs.step.externalData) files.push(manifest.graphs.step.externalData);
  files.push(...manifest.tokenizer.files);
  for (const entry of manifest.state) if (entry.initFile && !files.includes(entry.initFile)) files.push(entry.initFile);
  return files;
}

/**
 * The external-data location as written inside the graph: `external_data` relative to the graph's folder
 * (ONNX Runtime resolves it next to the graph; onnxruntime-web needs that exact string in `externalData`).
 */
export function externalDataLocation(step) {
  if (!step.externalData) return null;
  const slash = step.path.lastIndexOf("/");
  const graphDir = slash >= 0 ? step.path.slice(0, slash + 1) : "";
  return graphDir && step.externalData.startsWith(graphDir) ? step.externalData.slice(graphDir.length) : step.externalData;
}
