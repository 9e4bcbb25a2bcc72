// Node.js side: files from disk and the onnxruntime-node binding (CPU). Everything else is the shared pure-JS code.
//
//   import { loadPackage } from "rwkv-deploy/deploy/node/src/node.js";
//   const pkg = await loadPackage("demo-out/fp32", { threads: 1 });
//   const result = await pkg.generator.generate("def ", { maxTokens: 32, temperature: 0 });

import { createHash } from "node:crypto";
import { constants, createReadStream } from "node:fs";
import { lstat, open, readdir, stat } from "node:fs/promises";
import path from "node:path";

import ort from "onnxruntime-node";

import { MAX_MANIFEST_BYTES, MANIFEST_NAME, PackageError, externalDataLocation, own } from "./manifest.js";
import { hashCheckedFiles, openPackage } from "./package.js";

export { ort };

const NOFOLLOW = constants.O_NOFOLLOW ?? 0;

/** Regular files of a package directory (relative "/" paths) and its problems: links and special files anywhere. */
export async function scanPackage(dir) {
  const names = [];
  const problems = [];
  async function walk(rel) {
    for (const entry of (await readdir(path.join(dir, ...rel.split("/").filter(Boolean)), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const name = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isSymbolicLink()) problems.push(`${name}: is a symbolic link (a package holds regular files and folders only)`);
      else if (entry.isDirectory()) await walk(name);
      else if (entry.isFile()) names.push(name);
      else problems.push(`${name}: is not a regular file (a package holds regular files and folders only)`);
    }
  }
  await walk("");
  return { names, problems };
}

function packageFiles(dir, { hashes }) {
  const describe = (rel) => path.join(dir, ...rel.split("/"));
  const read = async (rel, encoding, limit = Infinity) => {
    let handle;
    try {
      handle = await open(describe(rel), constants.O_RDONLY | NOFOLLOW);
      const info = await handle.stat();
      if (!info.isFile()) throw new PackageError(`${describe(rel)}: is not a regular file`);
      if (info.size > limit) throw new PackageError(`${describe(rel)}: larger than ${limit / 1024 ** 2} MiB; refusing to read it`);
      return await handle.readFile(encoding);
    } catch (err) {
      if (err instanceof PackageError) throw err;
      if (err.code === "ENOENT") {
        if (rel === MANIFEST_NAME) throw new PackageError(`${describe(rel)}: no manifest.json (is ${dir} an rwkv-deploy package?)`);
        throw new PackageError(`${describe(rel)}: listed in the manifest but missing`);
      }
      if (err.code === "ELOOP") throw new PackageError(`${describe(rel)}: is a symbolic link (a package holds regular files only)`);
      throw new PackageError(`${describe(rel)}: cannot read (${err.code ?? err.message})`);
    } finally {
      await handle?.close();
    }
  };
  return {
    describe,
    readText: (rel) => read(rel, "utf8", rel === MANIFEST_NAME ? MAX_MANIFEST_BYTES : Infinity),
    readBytes: async (rel, limit = Infinity) => new Uint8Array(await read(rel, undefined, limit)),
    exists: async (rel) => (await lstat(describe(rel)).catch(() => null))?.isFile() ?? false,
    // The trust rules of the Python runtime (package/trust.py): no links or special files anywhere, every file
    // outside validation/ listed in `files`, every listed file present and (unless hashes is false) hashed.
    check: async (manifest) => {
      const { names, problems } = await scanPackage(dir);
      const present = new Set(names);
      for (const name of names) {
        if (name !== MANIFEST_NAME && name !== "PACKAGE.json" && !name.startsWith("validation/") && !own(manifest.files, name)) {
          problems.push(`${name}: not listed in manifest.json files (unexpected file in the package)`);
        }
      }
      for (const name of Object.keys(manifest.files)) if (!present.has(name)) problems.push(`${name}: listed in manifest.json but missing`);
      if (hashes && !problems.length) problems.push(...(await verifyFiles(dir, manifest)));
      if (problems.length) {
        const first = problems[0].startsWith(dir) ? problems[0] : path.join(dir, problems[0]);
        throw new PackageError(first + (problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""));
      }
    },
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
    const info = await lstat(file).catch(() => null);
    if (!info?.isFile()) problems.push(`${file}: listed in manifest.json but missing`);
    else if ((await sha256File(file)) !== digest) problems.push(`${file}: sha256 does not match manifest.json (file changed or corrupt)`);
  }
  return problems;
}

/**
 * Open a package directory with onnxruntime-node on the CPU, through the same trust rules as the Python runtime.
 * Options: threads (intra-op threads; default ORT's), verify (check every file's sha256 against the manifest
 * first; default true: false skips only the hashing of a trusted local package, never the path rules).
 * Returns {manifest, tokenizer, backend, generator, session}.
 */
export async function loadPackage(dir, { threads = null, verify = true } = {}) {
  if (!(await stat(dir).catch(() => null))?.isDirectory()) {
    throw new PackageError(`${dir}: not a package directory (no such directory)`);
  }
  const files = packageFiles(dir, { hashes: verify });
  return openPackage({
    ort,
    files,
    createSession: async (manifest) => {
      // ONNX Runtime gets the bytes that were hashed, never a path it would open again later (a graph or its
      // weights swapped after the check are not used): graph and external data are read once, checked, passed.
      const reader = verify ? hashCheckedFiles(files, manifest) : files;
      const step = manifest.graphs.step;
      const graph = files.describe(step.path);
      const options = { executionProviders: ["cpu"], graphOptimizationLevel: "all", executionMode: "sequential", interOpNumThreads: 1 };
      if (threads) options.intraOpNumThreads = threads;
      const bytes = await reader.readBytes(step.path);
      if (step.externalData) options.externalData = [{ path: externalDataLocation(step), data: await reader.readBytes(step.externalData) }];
      try {
        return await ort.InferenceSession.create(bytes, options);
      } catch (err) {
        throw new PackageError(`${graph}: onnxruntime-node cannot load the graph (${String(err.message).split("\n")[0]})`);
      }
    },
  });
}
