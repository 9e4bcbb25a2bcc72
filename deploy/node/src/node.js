// Node.js side: files from disk and the onnxruntime-node binding (CPU). Everything else is the shared pure-JS code.
//
//   import { loadPackage } from "rwkv-deploy/deploy/node/src/node.js";
//   const pkg = await loadPackage("demo-out/fp32", { threads: 1 });
//   const result = await pkg.generator.generate("def ", { maxTokens: 32, temperature: 0 });

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";

import ort from "onnxruntime-node";

import { MANIFEST_NAME, PackageError } from "./manifest.js";
import { openPackage } from "./package.js";

export { ort };

function packageFiles(dir) {
  const describe = (rel) => path.join(dir, ...rel.split("/"));
  const read = async (rel, encoding) => {
    try {
      return await readFile(describe(rel), encoding);
    } catch (err) {
      if (err.code === "ENOENT") {
        if (rel === MANIFEST_NAME) throw new PackageError(`${describe(rel)}: no manifest.json (is ${dir} an rwkv-deploy package?)`);
        throw new PackageError(`${describe(rel)}: listed in the manifest but missing`);
      }
      throw new PackageError(`${describe(rel)}: cannot read (${err.code ?? err.message})`);
    }
  };
  return {
    describe,
    readText: (rel) => read(rel, "utf8"),
    readBytes: async (rel) => new Uint8Array(await read(rel)),
    exists: async (rel) => (await stat(describe(rel)).catch(() => null))?.isFile() ?? false,
  };
}

async function sha256File(file) {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk);
  return hash.digest("hex");
}

/** Problems (one line each) with the files the manifest lists: missing, or sha256 mismatch. */
export async function verifyFiles(dir, manifest) {
  const problems = [];
  for (const [rel, digest] of Object.entries(manifest.files)) {
    const file = path.join(dir, ...rel.split("/"));
    const info = await stat(file).catch(() => null);
    if (!info?.isFile()) problems.push(`${file}: listed in the manifest but missing`);
    else if ((await sha256File(file)) !== digest) problems.push(`${file}: sha256 does not match the manifest (file changed or corrupt)`);
  }
  return problems;
}

/**
 * Open a package directory with onnxruntime-node on the CPU. Options: threads (intra-op threads; default ORT's),
 * verify (check every file's sha256 against the manifest first; default false).
 * Returns {manifest, tokenizer, backend, generator, session}.
 */
export async function loadPackage(dir, { threads = null, verify = false } = {}) {
  if (!(await stat(dir).catch(() => null))?.isDirectory()) {
    throw new PackageError(`${dir}: not a package directory (no such directory)`);
  }
  const files = packageFiles(dir);
  return openPackage({
    ort,
    files,
    createSession: async (manifest) => {
      if (verify) {
        const problems = await verifyFiles(dir, manifest);
        if (problems.length) throw new PackageError(problems[0] + (problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""));
      }
      const graph = files.describe(manifest.graphs.step.path);
      const options = { executionProviders: ["cpu"], graphOptimizationLevel: "all", executionMode: "sequential", interOpNumThreads: 1 };
      if (threads) options.intraOpNumThreads = threads;
      try {
        // From a path, ONNX Runtime finds the external data file (graphs.step.external_data) next to the graph.
        return await ort.InferenceSession.create(graph, options);
      } catch (err) {
        throw new PackageError(`${graph}: onnxruntime-node cannot load the graph (${String(err.message).split("\n")[0]})`);
      }
    },
  });
}
