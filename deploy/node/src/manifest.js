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

// The same trust rules as the Python package layer (package/schema.py, package/trust.py; docs/manifest.md,
// "Trust"): bounded size and nesting, strict types and ranges, no unknown fields, every path relative and
// inside the package, every file the runtime opens listed in `files` with a sha256. Duplicate JSON keys cannot
// be seen after JSON.parse (Python's reader refuses them; `rwkv-deploy verify` reports them).
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_JSON_DEPTH = 32;
export const MAX_STATE_BYTES = 4 * 1024 ** 3;
const VERSIONS = new Set(["4", "5.0", "5.1", "5.2", "6", "7"]);
const MAX_LAYERS = 4096;
const MAX_WIDTH = 1 << 20;
const MAX_VOCAB = 1 << 24;
const MAX_DIM = 2 ** 31;
const SHA256 = /^[0-9a-f]{64}$/;
const TOP = ["model", "graphs", "state", "tokenizer", "files", "token_input", "logits_output", "format_version"];
const TOP_OPTIONAL = ["producer", "source", "engines", "cpu_graphs"];

/** Why `name` cannot be a relative path inside a package, or null if it can (package/schema.py path_problem). */
export function pathProblem(name) {
  if (typeof name !== "string" || !name) return "empty path";
  if (name.length > 1024) return "longer than 1024 characters";
  if (name.startsWith("/") || name.startsWith("\\") || /^[A-Za-z]:/.test(name)) return "absolute path";
  if (name.includes("\\") || /[\u0000-\u001f]/.test(name)) return "backslash or control character in the path";
  const parts = (name.endsWith("/") ? name.slice(0, -1) : name).split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) return "empty, '.' or '..' path component";
  return null;
}

function fail(where, field, problem) {
  return new PackageError(`${where}: ${field} ${problem}`);
}

/**
 * Whether `key` is the object's own property. A package's names are untrusted: `key in obj` and `obj[key]` also
 * find what every object inherits (`constructor`, `__proto__`, `toString`), which would let a file named
 * "constructor" pass as listed and hashed.
 */
export function own(object, key) {
  return object !== null && object !== undefined && Object.prototype.hasOwnProperty.call(object, key);
}

// A state name becomes graph input/output names and a key of state files: the Python schema's grammar
// (package/schema.py STATE_NAME): letters, digits, _ . -, not starting with . or -, no "..".
const STATE_NAME = /^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

function typeName(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (Number.isInteger(v)) return "an integer";
  return { object: "an object", string: "a string", boolean: "a boolean", number: "a number" }[typeof v] ?? typeof v;
}

function obj(value, where, field, required, optional = []) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw fail(where, field, `must be an object, not ${typeName(value)}`);
  const missing = required.find((k) => !own(value, k));
  if (missing !== undefined) throw fail(where, field, `lacks the field ${JSON.stringify(missing)}`);
  const unknown = Object.keys(value).find((k) => !required.includes(k) && !optional.includes(k));
  if (unknown !== undefined) throw fail(where, field, `has an unknown field ${JSON.stringify(unknown.slice(0, 40))}`);
  return value;
}

function int(value, where, field, low, high) {
  if (!Number.isInteger(value)) throw fail(where, field, `must be an integer, not ${typeName(value)}`);
  if (value < low || value > high) throw fail(where, field, `is ${value}, outside ${low}..${high}`);
  return value;
}

function str(value, where, field, choices = null) {
  if (typeof value !== "string") throw fail(where, field, `must be a string, not ${typeName(value)}`);
  if (choices && !choices.has(value)) throw fail(where, field, `is ${JSON.stringify(value.slice(0, 40))}, not one of ${[...choices].join(", ")}`);
  if (!value || value.length > 256) throw fail(where, field, `${JSON.stringify(value.slice(0, 40))} is not an allowed value`);
  return value;
}

function safePath(value, where, field) {
  if (typeof value !== "string") throw fail(where, field, `must be a string, not ${typeName(value)}`);
  const problem = pathProblem(value);
  if (problem) throw fail(where, field, `${JSON.stringify(value.slice(0, 80))} is not a safe relative path inside the package (${problem})`);
  if (value === MANIFEST_NAME || value === "PACKAGE.json") throw fail(where, field, `${JSON.stringify(value)} names the package's own ${value}`);
  return value;
}

/** Nesting depth of JSON text (strings skipped), checked before JSON.parse sees it. */
export function nestingDepth(text) {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) max = Math.max(max, ++depth);
    else if (c === 93 || c === 125) depth--;
  }
  return max;
}

function referencedBy(data) {
  const refs = [];
  for (const [name, g] of Object.entries(data.graphs)) {
    refs.push([`graphs.${name}.path`, g.path]);
    if (g.external_data != null) refs.push([`graphs.${name}.external_data`, externalDataPath(g.path, g.external_data)]);
  }
  for (const f of data.tokenizer.files ?? []) refs.push(["tokenizer.files", f]);
  for (const s of data.state) if (s.init_file != null) refs.push([`state ${JSON.stringify(s.name)} init_file`, s.init_file]);
  for (const [kind, e] of Object.entries(data.engines ?? {})) for (const key of ["plan", "info"]) refs.push([`engines.${kind}.${key}`, e[key]]);
  for (const [kind, e] of Object.entries(data.cpu_graphs ?? {})) {
    refs.push([`cpu_graphs.${kind}.path`, e.path]);
    refs.push([`cpu_graphs.${kind}.external_data`, externalDataPath(e.path, e.external_data)]);
  }
  return refs;
}

/** A graph's external data file as a package path: resolved next to the graph (package/manifest.py). */
export function externalDataPath(graphPath, name) {
  const slash = graphPath.lastIndexOf("/");
  return slash >= 0 ? `${graphPath.slice(0, slash)}/${name}` : name;
}

function checkSchema(data, where) {
  obj(data, where, "the file", TOP, TOP_OPTIONAL);
  const model = obj(data.model, where, "model", ["version", "n_layer", "n_embd", "n_head", "head_size", "vocab_size", "ffn_size"], ["lora"]);
  str(model.version, where, "model.version", VERSIONS);
  int(model.n_layer, where, "model.n_layer", 1, MAX_LAYERS);
  int(model.n_embd, where, "model.n_embd", 1, MAX_WIDTH);
  if (model.n_head !== null) int(model.n_head, where, "model.n_head", 1, MAX_WIDTH);
  if (model.head_size !== null) int(model.head_size, where, "model.head_size", 1, MAX_WIDTH);
  const vocab = int(model.vocab_size, where, "model.vocab_size", 1, MAX_VOCAB);
  int(model.ffn_size, where, "model.ffn_size", 1, 64 * MAX_WIDTH);
  if (model.lora !== undefined) for (const [k, v] of Object.entries(obj(model.lora, where, "model.lora", [], Object.keys(model.lora)))) int(v, where, `model.lora.${k}`, 0, MAX_WIDTH);
  if (data.token_input !== "token" || data.logits_output !== "logits") throw fail(where, "the file", "token_input/logits_output must be 'token'/'logits' in format 1");
  const graphs = obj(data.graphs, where, "graphs", [], Object.keys(data.graphs ?? {}));
  if (!own(graphs, STEP_GRAPH)) throw fail(where, "graphs", `has no "step" graph (has: ${Object.keys(graphs).slice(0, 4).join(", ") || "none"})`);
  for (const [name, entry] of Object.entries(graphs)) {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw fail(where, "graphs", `has a graph named ${JSON.stringify(name.slice(0, 40))}`);
    const g = obj(entry, where, `graphs.${name}`, ["path", "precision", "opset"], ["external_data", "quantization", "logits"]);
    safePath(g.path, where, `graphs.${name}.path`);
    if (g.external_data != null) {
      str(g.external_data, where, `graphs.${name}.external_data`);
      const problem = pathProblem(externalDataPath(g.path, g.external_data));
      if (problem) throw fail(where, `graphs.${name}.external_data`, `${JSON.stringify(g.external_data.slice(0, 80))} is not a safe relative path (${problem})`);
    }
    if (!/^[a-z0-9]{1,16}$/.test(String(g.precision)) || typeof g.precision !== "string") throw fail(where, `graphs.${name}.precision`, "is not an allowed value");
    int(g.opset, where, `graphs.${name}.opset`, 1, 100);
    if (g.logits != null) str(g.logits, where, `graphs.${name}.logits`, new Set(["last", "all"]));
    if (g.quantization != null) obj(g.quantization, where, `graphs.${name}.quantization`, [], Object.keys(g.quantization ?? {}));
  }
  if (!Array.isArray(data.state)) throw fail(where, "state", `must be an array, not ${typeName(data.state)}`);
  if (!data.state.length) throw fail(where, "state", "is empty (a recurrent model has state)");
  if (data.state.length > 16 * model.n_layer + 16) throw fail(where, "state", `has ${data.state.length} entries, more than ${16 * model.n_layer + 16}`);
  const seen = new Set();
  let total = 0;
  data.state.forEach((s, i) => {
    const at = `state[${i}]`;
    obj(s, where, at, ["name", "input", "output", "shape", "dtype", "init"], ["init_file"]);
    const name = str(s.name, where, `${at}.name`);
    if (!STATE_NAME.test(name)) throw fail(where, `${at}.name`, `${JSON.stringify(name.slice(0, 40))} is not an allowed value`);
    if (seen.has(name)) throw fail(where, `${at}.name`, `${JSON.stringify(name)} appears twice`);
    seen.add(name);
    if (s.input !== `state_in.${name}` || s.output !== `state_out.${name}`) throw fail(where, at, `input/output must be "state_in.${name}"/"state_out.${name}"`);
    if (!Array.isArray(s.shape) || s.shape.length > 8) throw fail(where, `${at}.shape`, "must be an array of at most 8 dims");
    if (s.shape[0] !== "batch") throw fail(where, `${at}.shape`, "must start with 'batch'");
    s.shape.slice(1).forEach((d, k) => int(d, where, `${at}.shape[${k + 1}]`, 1, MAX_DIM));
    str(s.dtype, where, `${at}.dtype`, new Set(["float32"]));
    if (typeof s.init !== "number" || !Number.isFinite(s.init)) throw fail(where, `${at}.init`, `must be a finite number, not ${typeName(s.init)}`);
    if (s.init_file != null) safePath(s.init_file, where, `${at}.init_file`);
    total += s.shape.slice(1).reduce((a, b) => a * b, 1) * 4;
  });
  if (total > MAX_STATE_BYTES) throw fail(where, "state", `declares ${(total / 1024 ** 3).toFixed(1)} GiB of state per sequence, more than the cap`);
  const tok = obj(data.tokenizer, where, "tokenizer", ["kind"], ["files", "eos_token_id"]);
  const kind = str(tok.kind, where, "tokenizer.kind", TOKENIZER_KINDS);
  const tokFiles = tok.files ?? [];
  if (!Array.isArray(tokFiles)) throw fail(where, "tokenizer.files", `must be an array, not ${typeName(tokFiles)}`);
  tokFiles.forEach((f, i) => safePath(f, where, `tokenizer.files[${i}]`));
  const [least, most] = { hf: [1, 1], world: [0, 1], bytes: [0, 0], none: [0, 0] }[kind];
  if (tokFiles.length < least || tokFiles.length > most) throw fail(where, "tokenizer.files", `has ${tokFiles.length} entries; tokenizer kind ${JSON.stringify(kind)} takes ${least === most ? least : `${least} or ${most}`}`);
  if (tok.eos_token_id != null) int(tok.eos_token_id, where, "tokenizer.eos_token_id", 0, vocab - 1);
  const needed = { world: 65536, bytes: 256 }[kind] ?? 0;
  if (vocab < needed) throw fail(where, "tokenizer", `kind ${JSON.stringify(kind)} emits ids up to ${needed - 1}, but the model's vocab_size is ${vocab}`);
  const files = obj(data.files, where, "files", [], Object.keys(data.files ?? {}));
  for (const [name, digest] of Object.entries(files)) {
    safePath(name, where, "files");
    if (typeof digest !== "string" || !SHA256.test(digest)) throw fail(where, `files.${name.slice(0, 80)}`, "must be a lowercase hex sha256 (64 characters)");
  }
  for (const key of ["producer", "source"]) if (own(data, key)) obj(data[key], where, key, [], Object.keys(data[key] ?? {}));
  if (own(data, "engines")) {
    const engines = obj(data.engines, where, "engines", [], Object.keys(data.engines ?? {}));
    for (const [k, e] of Object.entries(engines)) {
      if (!own(data.graphs, k)) throw fail(where, `engines.${k.slice(0, 40)}`, `is an engine of ${JSON.stringify(k.slice(0, 40))}, which is not in graphs`);
      obj(e, where, `engines.${k}`, ["plan", "info", "library", "version"], ["targets"]);
      safePath(e.plan, where, `engines.${k}.plan`);
      safePath(e.info, where, `engines.${k}.info`);
    }
  }
  if (own(data, "cpu_graphs")) {
    const cpu = obj(data.cpu_graphs, where, "cpu_graphs", [], Object.keys(data.cpu_graphs ?? {}));
    for (const [k, e] of Object.entries(cpu)) {
      if (!own(data.graphs, k)) throw fail(where, `cpu_graphs.${k.slice(0, 40)}`, `is a CPU graph of ${JSON.stringify(k.slice(0, 40))}, which is not in graphs`);
      obj(e, where, `cpu_graphs.${k}`, ["path", "external_data", "ops", "ops_version", "source", "source_sha256"]);
      safePath(e.path, where, `cpu_graphs.${k}.path`);
      str(e.external_data, where, `cpu_graphs.${k}.external_data`);
      safePath(externalDataPath(e.path, e.external_data), where, `cpu_graphs.${k}.external_data`);
    }
  }
  for (const [field, name] of referencedBy(data)) {
    if (!own(files, name)) throw new PackageError(`${where}: ${field} ${JSON.stringify(name)} is not listed in files (its hash cannot be checked)`);
  }
}

/**
 * Parse manifest text. `where` names the file in error messages (e.g. "pkg/manifest.json").
 * Returns a plain object with the fields runtimes use; unknown graphs (e.g. "prefill") are kept but ignored.
 * Every rule of the Python reader applies (see above); the first broken one is a PackageError naming the field.
 */
export function parseManifest(text, where = MANIFEST_NAME) {
  if (text.length > MAX_MANIFEST_BYTES) throw new PackageError(`${where}: larger than ${MAX_MANIFEST_BYTES / 1024 ** 2} MiB; refusing to read it (a real one is a few KB)`);
  const depth = nestingDepth(text);
  if (depth > MAX_JSON_DEPTH) throw new PackageError(`${where}: JSON nested ${depth} levels deep (at most ${MAX_JSON_DEPTH} allowed)`);
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new PackageError(`${where}: not valid JSON (${err.message})`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new PackageError(`${where}: not valid JSON of a manifest (not an object)`);
  }
  if (data.format_version !== FORMAT_VERSION) {
    throw new PackageError(`${where}: format_version ${JSON.stringify(data.format_version ?? null)} is not supported (this runtime reads ${FORMAT_VERSION})`);
  }
  checkSchema(data, where);
  const model = data.model;
  const graphs = data.graphs;
  const stepInfo = graphs[STEP_GRAPH];
  const step = {
    path: stepInfo.path,
    precision: stepInfo.precision,
    opset: stepInfo.opset,
    externalData: stepInfo.external_data == null ? null : externalDataPath(stepInfo.path, stepInfo.external_data),
  };
  const state = data.state.map((entry) => ({
    name: entry.name,
    input: entry.input,
    output: entry.output,
    shape: entry.shape,
    dims: entry.shape.slice(1),
    size: entry.shape.slice(1).reduce((a, b) => a * b, 1),
    dtype: entry.dtype,
    init: entry.init,
    initFile: entry.init_file ?? null,
  }));
  const tok = data.tokenizer;
  const tokenizer = { kind: tok.kind, files: tok.files ?? [], eosTokenId: tok.eos_token_id ?? null };
  return {
    formatVersion: data.format_version,
    model: { ...model, vocabSize: model.vocab_size },
    graphs: { step },
    otherGraphs: Object.keys(graphs).filter((g) => g !== STEP_GRAPH),
    state,
    tokenizer,
    files: Object.assign(Object.create(null), data.files), // no inherited names: only listed files are found
    tokenInput: data.token_input,
    logitsOutput: data.logits_output,
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
