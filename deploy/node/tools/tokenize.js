#!/usr/bin/env node
// Test and debugging aid: run the shared JS tokenizers on texts given as JSON on stdin.
//   stdin:  {"kind": "world" | "bytes", "vocab": "path/to/rwkv_vocab_v20230424.txt", "texts": ["...", ...],
//            "decode": [[ids], ...], "dump_vocab": false}
//   stdout: {"ids": [[...] per text], "roundtrip": [text per text], "decoded": [text per id list],
//            "vocab": {"id": "hex bytes"} when dump_vocab}

import { readFileSync } from "node:fs";

import { ByteTokenizer, WorldTokenizer } from "../src/tokenizers.js";

const request = JSON.parse(readFileSync(0, "utf8"));
const tokenizer = request.kind === "world"
  ? new WorldTokenizer(readFileSync(request.vocab, "utf8"), request.vocab)
  : new ByteTokenizer();
const ids = (request.texts ?? []).map((text) => tokenizer.encode(text));
const reply = {
  ids,
  roundtrip: ids.map((row) => tokenizer.decode(row)),
  decoded: (request.decode ?? []).map((row) => tokenizer.decode(row)),
};
if (request.dump_vocab && tokenizer.idToBytes) {
  reply.vocab = Object.fromEntries([...tokenizer.idToBytes].map(([id, bytes]) => [id, Buffer.from(bytes).toString("hex")]));
}
process.stdout.write(JSON.stringify(reply));
