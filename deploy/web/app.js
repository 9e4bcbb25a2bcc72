// Browser side: package files over fetch and the onnxruntime-web binding (WebAssembly). Manifest, state,
// tokenizers, sampling and generation are the same modules Node uses (deploy/node/src).
//
// Query parameters: package (URL of the package directory, relative to this page), prompt, max_tokens,
// temperature, top_p, top_k, seed, greedy=1, threads, autorun=1 (generate as soon as the package is loaded).
// Progress and the last result are also published as window.rwkvDemo = {status, manifest, result, error}
// ("loading" | "ready" | "running" | "done" | "error"), which the end-to-end test reads.

import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

import { MANIFEST_NAME, PackageError, externalDataLocation } from "../node/src/manifest.js";
import { openPackage } from "../node/src/package.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const demo = (window.rwkvDemo = { status: "loading", manifest: null, result: null, error: null });

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function fail(err) {
  demo.status = "error";
  demo.error = String(err?.message ?? err);
  setStatus(`error: ${demo.error}`, true);
  console.error(err);
}

/** Package files fetched relative to `base` (a directory URL ending in "/"). */
function packageFiles(base) {
  const describe = (rel) => new URL(rel, base).href;
  const get = async (rel) => {
    let response;
    try {
      response = await fetch(describe(rel));
    } catch (err) {
      throw new PackageError(`${describe(rel)}: cannot fetch (${err.message})`);
    }
    if (!response.ok) {
      const why = rel === MANIFEST_NAME ? "no manifest.json here (is this an rwkv-deploy package?)" : "listed in the manifest but missing";
      throw new PackageError(`${describe(rel)}: HTTP ${response.status}, ${why}`);
    }
    return response;
  };
  return {
    describe,
    readText: async (rel) => (await get(rel)).text(),
    readBytes: async (rel) => new Uint8Array(await (await get(rel)).arrayBuffer()),
    exists: async (rel) => (await fetch(describe(rel), { method: "HEAD" }).catch(() => null))?.ok ?? false,
    // Nothing can be listed or hashed on a server beforehand: every file is checked against the manifest's
    // sha256 as it is read (deploy/node/src/package.js hashCheckedFiles), so nothing unverified runs.
    hashReads: true,
  };
}

async function load(packageUrl) {
  const base = new URL(packageUrl.endsWith("/") ? packageUrl : `${packageUrl}/`, location.href);
  const threads = Number(params.get("threads") ?? 1);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, threads) : 1; // threads need COOP/COEP headers
  ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", location.href).href; // local files, no CDN
  const files = packageFiles(base);
  setStatus(`loading ${base.href} …`);
  return openPackage({
    ort,
    files,
    createSession: async (manifest, checked) => {
      const step = manifest.graphs.step;
      setStatus(`downloading ${step.path} …`);
      const graph = await checked.readBytes(step.path);
      const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
      if (step.externalData) {
        // The graph names its weights file relative to itself; hand onnxruntime-web that file's bytes under that name.
        setStatus(`downloading ${step.externalData} …`);
        options.externalData = [{ path: externalDataLocation(step), data: await checked.readBytes(step.externalData) }];
      }
      try {
        return await ort.InferenceSession.create(graph, options);
      } catch (err) {
        throw new PackageError(`${files.describe(step.path)}: onnxruntime-web cannot load the graph (${String(err.message).split("\n")[0]})`);
      }
    },
  });
}

function readForm() {
  const num = (id, fallback) => ($(id).value === "" ? fallback : Number($(id).value));
  return {
    prompt: $("prompt").value,
    maxTokens: num("max_tokens", 128),
    temperature: $("greedy").checked ? 0 : num("temperature", 1),
    topP: num("top_p", 1),
    topK: num("top_k", 0),
    seed: $("seed").value === "" ? null : Number($("seed").value),
  };
}

async function generate(pkg) {
  const { prompt, ...options } = readForm();
  const output = $("output");
  output.textContent = "";
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  const generated = document.createElement("span");
  output.append(promptSpan, generated);
  $("run").disabled = true;
  demo.status = "running";
  setStatus("generating …");
  try {
    const result = await pkg.generator.generate(pkg.tokenizer ? prompt : prompt.split(/[\s,]+/).filter(Boolean).map(Number), {
      ...options,
      onToken: (piece) => {
        generated.textContent += piece;
      },
    });
    if (!pkg.tokenizer) generated.textContent = ` → ${result.tokenIds.join(" ")}`;
    const { state, ...rest } = result;
    demo.result = rest;
    demo.status = "done";
    const s = result.stats;
    setStatus(`${s.promptTokens} prompt tokens, ${s.generatedTokens} generated at ${s.decodeTokensPerSecond.toFixed(1)} tokens/s ` +
      `(${options.temperature === 0 ? "greedy" : `temperature ${options.temperature}, top-p ${options.topP}`}), finish: ${result.finishReason}`);
  } catch (err) {
    fail(err);
  } finally {
    $("run").disabled = false;
  }
}

async function main() {
  for (const [param, id] of [["prompt", "prompt"], ["max_tokens", "max_tokens"], ["temperature", "temperature"], ["top_p", "top_p"], ["top_k", "top_k"], ["seed", "seed"]]) {
    if (params.has(param)) $(id).value = params.get(param);
  }
  if (params.has("greedy")) $("greedy").checked = params.get("greedy") !== "0";
  const packageUrl = params.get("package");
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const wanted = $("package").value.trim();
    if (wanted && wanted !== packageUrl) {
      // another package: reload the page for it and generate right away
      const next = new URLSearchParams(params);
      next.set("package", wanted);
      next.set("prompt", $("prompt").value);
      next.set("autorun", "1");
      location.search = next.toString();
    } else if (demo.pkg) {
      generate(demo.pkg);
    }
  });
  if (!packageUrl) {
    demo.status = "error";
    demo.error = "no package: enter the URL of a package directory above, or open this page with ?package=URL";
    setStatus(demo.error, true);
    $("run").disabled = false;
    return;
  }
  $("package").value = packageUrl;
  const pkg = await load(packageUrl);
  Object.defineProperty(demo, "pkg", { value: pkg, enumerable: false }); // not serialised by the test driver
  const m = pkg.manifest;
  demo.manifest = m.raw;
  demo.status = "ready";
  $("model").textContent = `RWKV-${m.model.version}, ${m.model.n_layer} layers × ${m.model.n_embd}, vocab ${m.model.vocabSize}, ` +
    `${m.graphs.step.precision}, tokenizer ${m.tokenizer.kind}`;
  if (!pkg.tokenizer) $("prompt").placeholder = "token ids, e.g. 1 2 3";
  setStatus(`ready (onnxruntime-web ${ort.env.versions.web}, WebAssembly, ${ort.env.wasm.numThreads} thread(s))`);
  $("run").disabled = false;
  if (params.get("autorun") === "1") await generate(pkg);
}

main().catch(fail);
