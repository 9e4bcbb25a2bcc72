#!/usr/bin/env node
// node deploy/node/cli.js DIR --prompt TEXT [--max-tokens N] [--greedy | --temperature T --top-p P --top-k K --seed S]
// Generates from an rwkv-deploy package with onnxruntime-node (CPU) and streams the text to stdout.
// Bad input gets one line on stderr naming the file and exit code 2; other failures exit 1.

import { closeSync, constants, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { availableParallelism } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { samplingParams } from "./src/sampling.js";

const USAGE = `usage: node deploy/node/cli.js DIR (--prompt TEXT | --tokens ID,ID,...) [options]

  DIR                      package directory written by \`rwkv-deploy export\`
  --prompt TEXT            prompt text (encoded with the package's tokenizer)
  --tokens IDS             prompt as comma-separated token ids (packages without a tokenizer)
  --max-tokens N           tokens to generate (default 128)
  --greedy                 always take the most likely token (same as --temperature 0)
  --temperature T          sampling temperature (default 1.0; 0 = greedy)
  --top-p P                nucleus sampling: keep the most likely tokens up to probability P (default 1)
  --top-k K                keep the K most likely tokens (default 0 = all)
  --presence-penalty X     subtract X from tokens already generated (default 0)
  --frequency-penalty X    subtract X per occurrence (default 0)
  --seed S                 seed of the sampler (deterministic PRNG; default random)
  --stop TEXT              stop when TEXT appears (repeatable; cut from the output)
  --threads N              ONNX Runtime intra-op threads (default: ONNX Runtime's choice)
  --no-verify              skip hashing the package's files (a trusted local package; the path rules stay)
  --json                   print one JSON object (text, token ids, stats) instead of streaming text
  --dump-logits FILE       write JSON {prompt_ids, token_ids, logits: [[...] per step]} (every step's logits)
  --quiet                  no statistics on stderr
  -h, --help               this help`;

class UsageError extends Error {
  constructor(message) {
    super(message);
    this.exitCode = 2;
  }
}

// Plain decimal numbers only, as Python's CLI takes them: no hex (0x41), no exponent in an integer (1e2), no "".
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const INTEGER = /^[+-]?\d+$/;
const decimal = (raw) => (DECIMAL.test(raw.trim()) ? Number(raw) : NaN);
const integer = (raw) => (INTEGER.test(raw.trim()) ? Number(raw) : NaN);

function number(values, name, parse = decimal, check = () => true) {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = parse(raw);
  if (Number.isNaN(value) || !check(value)) throw new UsageError(`--${name}: invalid value ${JSON.stringify(raw)}`);
  return value;
}

const isInt = (v) => Number.isInteger(v);

/** Whether every argument of this process was valid UTF-8 (Node turns invalid bytes into U+FFFD silently). */
function argumentsAreUtf8() {
  try {
    const raw = readFileSync("/proc/self/cmdline");
    const fatal = new TextDecoder("utf-8", { fatal: true });
    let start = 0;
    for (let i = 0; i < raw.length; i++) {
      if (raw[i] === 0) {
        fatal.decode(raw.subarray(start, i));
        start = i + 1;
      }
    }
    return true;
  } catch (err) {
    return err?.code === "ENOENT"; // no /proc (not Linux): nothing more to check
  }
}

/** Write `text` to `target` through a new file beside it, renamed over it: never through a link at `target`. */
function writeReplacing(target, text) {
  const temporary = path.join(path.dirname(target), `.${path.basename(target)}.tmp-${process.pid}`);
  const fd = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(temporary, target);
  } catch (err) {
    rmSync(temporary, { force: true });
    throw err;
  }
}

/** The line with control characters shown as escapes (a name from a package must not drive the terminal). */
const printable = (line) => line.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        prompt: { type: "string" },
        tokens: { type: "string" },
        "max-tokens": { type: "string" },
        greedy: { type: "boolean" },
        temperature: { type: "string" },
        "top-p": { type: "string" },
        "top-k": { type: "string" },
        "presence-penalty": { type: "string" },
        "frequency-penalty": { type: "string" },
        seed: { type: "string" },
        stop: { type: "string", multiple: true },
        threads: { type: "string" },
        verify: { type: "boolean" },
        "no-verify": { type: "boolean" },
        json: { type: "boolean" },
        "dump-logits": { type: "string" },
        quiet: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw new UsageError(`${err.message} (see --help)`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError("give exactly one package directory (see --help)");
  if ((values.prompt === undefined) === (values.tokens === undefined)) throw new UsageError("give either --prompt TEXT or --tokens IDS");
  const maxTokens = number(values, "max-tokens", integer, (v) => isInt(v) && v >= 0) ?? 128;
  const threads = number(values, "threads", integer, (v) => isInt(v) && v >= 1 && v <= 4 * (availableParallelism?.() ?? 64));
  const temperature = values.greedy ? 0 : number(values, "temperature") ?? 1.0;
  const options = {
    maxTokens,
    temperature,
    topP: number(values, "top-p") ?? 1.0,
    topK: number(values, "top-k", integer, isInt) ?? 0,
    presencePenalty: number(values, "presence-penalty") ?? 0,
    frequencyPenalty: number(values, "frequency-penalty") ?? 0,
    seed: number(values, "seed", integer, (v) => Number.isSafeInteger(v) && v >= 0) ?? null,
    stopStrings: values.stop ?? [],
  };
  samplingParams(options); // refuse bad settings before loading anything
  if (values.prompt?.includes("\ufffd") && !argumentsAreUtf8()) {
    throw new UsageError("--prompt: not valid UTF-8 (the tokenizers take text; give ids with --tokens)");
  }
  let prompt = values.prompt;
  if (values.tokens !== undefined) {
    prompt = values.tokens.split(",").map((s) => s.trim()).filter(Boolean).map(integer);
    if (!prompt.length || !prompt.every(isInt)) throw new UsageError(`--tokens: expected comma-separated integers, got ${JSON.stringify(values.tokens)}`);
  }

  let loadPackage;
  try {
    ({ loadPackage } = await import("./src/node.js"));
  } catch (err) {
    if (err.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes("onnxruntime-node")) {
      throw new Error("onnxruntime-node is not installed: run `npm ci` in deploy/node (or `make setup`)");
    }
    throw err;
  }
  const pkg = await loadPackage(positionals[0], { threads, verify: !values["no-verify"] });
  const steps = [];
  const result = await pkg.generator.generate(prompt, {
    ...options,
    onToken: values.json ? null : (piece) => process.stdout.write(piece),
    onStep: values["dump-logits"] ? (logits) => steps.push(Array.from(logits)) : null,
  });
  if (values.json) {
    const { state, ...rest } = result;
    console.log(JSON.stringify(rest));
  } else if (!pkg.tokenizer) {
    process.stdout.write(result.tokenIds.join(" "));
  }
  if (!values.json) process.stdout.write("\n");
  if (values["dump-logits"]) {
    writeReplacing(values["dump-logits"], JSON.stringify({ prompt_ids: result.promptIds, token_ids: result.tokenIds, logits: steps }));
  }
  if (!values.quiet) {
    const s = result.stats;
    process.stderr.write(`[${s.promptTokens} prompt tokens at ${s.prefillTokensPerSecond.toFixed(1)} tok/s, ` +
      `${s.generatedTokens} generated at ${s.decodeTokensPerSecond.toFixed(1)} tok/s, finish: ${result.finishReason}]\n`);
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const line = printable(String(err?.message ?? err).split("\n")[0]);
    process.stderr.write(`error: ${line}\n`);
    process.exitCode = err?.exitCode ?? 1;
  },
);
