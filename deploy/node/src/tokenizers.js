// Tokenizers of rwkv-deploy packages: RWKV World (greedy longest match over UTF-8 bytes, same ids as the Python
// WorldTokenizer) and bytes. Pure JS (TextEncoder/TextDecoder only): shared by Node and the browser.

export class TokenizerError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenizerError";
    this.exitCode = 2;
  }
}

const encoder = new TextEncoder();

export function utf8Encode(text) {
  return encoder.encode(text);
}

/** Text of UTF-8 bytes; invalid sequences become U+FFFD (like Python's errors="replace"). */
export function utf8Decode(bytes) {
  return new TextDecoder("utf-8").decode(bytes);
}

function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Token id = byte value: 256 ids, no end-of-document token. */
export class ByteTokenizer {
  constructor() {
    this.kind = "bytes";
    this.vocabSize = 256;
    this.eosTokenId = null;
  }

  encodeBytes(bytes) {
    return Array.from(bytes);
  }

  decodeBytes(ids) {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id > 255) throw new TokenizerError(`byte tokenizer ids must be integers 0..255, got ${id}`);
    }
    return Uint8Array.from(ids);
  }

  encode(text) {
    return this.encodeBytes(utf8Encode(text));
  }

  decode(ids) {
    return utf8Decode(this.decodeBytes(ids));
  }
}

// ---- World vocab file: "<id> <Python str or bytes literal> <byte length>" per line -------------------------------

const SIMPLE_ESCAPES = { "\\": 92, "'": 39, '"': 34, a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11 };

/**
 * The bytes of a Python str literal (UTF-8 encoded) or bytes literal (b'...'), for the escapes Python defines
 * (\\ \' \" \a \b \f \n \r \t \v \xhh \ooo, and in str literals \uXXXX \UXXXXXXXX). Throws Error when malformed.
 */
export function parsePythonLiteral(literal) {
  const isBytes = literal.startsWith("b");
  const body = isBytes ? literal.slice(1) : literal;
  const quote = body[0];
  if (body.length < 2 || (quote !== "'" && quote !== '"') || body[body.length - 1] !== quote) {
    throw new Error(`not a Python str or bytes literal: ${literal.slice(0, 40)}`);
  }
  const inner = body.slice(1, -1);
  if (!inner.includes("\\")) {
    if (inner.includes(quote)) throw new Error("unescaped quote inside the literal");
    if (isBytes && /[^\x00-\x7f]/.test(inner)) throw new Error("bytes literal with non-ASCII characters");
    return encoder.encode(inner); // no escapes: the literal is exactly its text, UTF-8 encoded
  }
  // str literal: collect code points; bytes literal: collect byte values.
  const out = [];
  let text = "";
  const flushText = () => {
    if (text) {
      out.push(...encoder.encode(text));
      text = "";
    }
  };
  for (let i = 0; i < inner.length; i++) {
    const ch = inner[i];
    if (ch !== "\\") {
      if (ch === quote) throw new Error("unescaped quote inside the literal");
      if (isBytes) {
        if (ch.charCodeAt(0) > 0x7f) throw new Error("bytes literal with non-ASCII characters");
        out.push(ch.charCodeAt(0));
      } else {
        text += ch;
      }
      continue;
    }
    const next = inner[++i];
    if (next === undefined) throw new Error("literal ends in a backslash");
    let code;
    if (Object.prototype.hasOwnProperty.call(SIMPLE_ESCAPES, next)) {
      code = SIMPLE_ESCAPES[next];
    } else if (next === "x" || (!isBytes && (next === "u" || next === "U"))) {
      const digits = next === "x" ? 2 : next === "u" ? 4 : 8;
      const hex = inner.slice(i + 1, i + 1 + digits);
      if (hex.length !== digits || !/^[0-9a-fA-F]+$/.test(hex)) throw new Error(`truncated \\${next} escape`);
      code = parseInt(hex, 16);
      i += digits;
    } else if (next >= "0" && next <= "7") {
      let oct = next;
      while (oct.length < 3 && inner[i + 1] >= "0" && inner[i + 1] <= "7") oct += inner[++i];
      code = parseInt(oct, 8);
    } else if (next === "\n") {
      continue; // line continuation
    } else {
      // Python keeps unknown escapes as backslash + character.
      if (isBytes) out.push(92, next.charCodeAt(0));
      else text += "\\" + next;
      continue;
    }
    if (isBytes) {
      if (code > 255) throw new Error("byte escape above 255");
      out.push(code);
    } else {
      if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) throw new Error("escape is not a Unicode scalar value");
      text += String.fromCodePoint(code);
    }
  }
  flushText();
  return Uint8Array.from(out);
}

export const WORLD_VOCAB_SIZE = 65536;
export const END_OF_DOCUMENT_ID = 0;

// Bounds of a package's World vocab, as in the Python reader (tokenization/untrusted.py): a package is untrusted.
export const MAX_WORLD_BYTES = 16 * 1024 * 1024;
export const MAX_WORLD_LINES = 65535;
export const MAX_LINE_CHARS = 8192;
export const MAX_TOKEN_BYTES = 1024;

/** Id -> token bytes from the text of a World vocab file; errors name `where` and the line. */
export function readWorldVocab(text, where = "vocab") {
  const vocab = new Map();
  const seen = new Map();
  const lines = text.split(/\r\n|\r|\n/); // Python reads the file with universal newlines
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n];
    if (!line) continue;
    if (vocab.size >= MAX_WORLD_LINES) throw new TokenizerError(`${where}:${n + 1}: more than ${MAX_WORLD_LINES} tokens`);
    if (line.length > MAX_LINE_CHARS) throw new TokenizerError(`${where}:${n + 1}: bad World vocab line: line of ${line.length} characters, more than ${MAX_LINE_CHARS}`);
    const declared = line.slice(line.lastIndexOf(" ") + 1);
    if (/^[0-9]+$/.test(declared) && Number(declared) > MAX_TOKEN_BYTES) {
      throw new TokenizerError(`${where}:${n + 1}: bad World vocab line: token of ${declared} bytes, more than ${MAX_TOKEN_BYTES}`);
    }
    const first = line.indexOf(" ");
    const last = line.lastIndexOf(" ");
    const fail = (why) => {
      throw new TokenizerError(`${where}:${n + 1}: bad World vocab line: ${why}`);
    };
    if (first < 0 || last <= first) fail("expected '<id> <python str or bytes literal> <byte length>'");
    const id = Number(line.slice(0, first));
    const length = Number(line.slice(last + 1));
    if (!Number.isInteger(id) || !Number.isInteger(length)) fail("id and byte length must be integers");
    let token;
    try {
      token = parsePythonLiteral(line.slice(first + 1, last));
    } catch (err) {
      fail(err.message);
    }
    if (token.length !== length) fail(`token is ${token.length} bytes but the line says ${length}`);
    if (!(id > 0 && id < WORLD_VOCAB_SIZE)) fail(`id ${id} outside 1..${WORLD_VOCAB_SIZE - 1} (0 is end-of-document)`);
    if (token.length === 0) fail("empty token");
    if (vocab.has(id)) fail(`id ${id} appears twice`);
    const key = token.join(",");
    if (seen.has(key)) fail(`token already on line ${seen.get(key)}`);
    seen.set(key, n + 1);
    vocab.set(id, token);
  }
  const single = new Set();
  for (const token of vocab.values()) if (token.length === 1) single.add(token[0]);
  if (single.size !== 256) throw new TokenizerError(`${where}: World vocab lacks single-byte tokens for ${256 - single.size} byte values`);
  return vocab;
}

/**
 * RWKV World tokenizer. The trie is one Map from (node * 256 + byte) to the child node, and every node knows the
 * longest token ending on its path from the root, so encoding walks forward only (greedy longest match).
 */
export class WorldTokenizer {
  constructor(vocabText, where = "vocab") {
    this.kind = "world";
    this.vocabSize = WORLD_VOCAB_SIZE;
    this.eosTokenId = END_OF_DOCUMENT_ID;
    this.where = where;
    const vocab = readWorldVocab(vocabText, where);
    this.idToBytes = new Map(vocab);
    this.idToBytes.set(END_OF_DOCUMENT_ID, new Uint8Array(0));
    const byLength = [...vocab.entries()].sort((a, b) => a[1].length - b[1].length);
    this.children = new Map();
    let nodes = [[-1, 0]]; // node -> [token id, token length] of the longest token on its path
    this.maxTokenLength = 0;
    for (const [id, token] of byLength) {
      let node = 0;
      for (const byte of token) {
        const key = node * 256 + byte;
        let child = this.children.get(key);
        if (child === undefined) {
          child = nodes.length;
          nodes.push(nodes[node]); // inherits the parent's answer; final, since shorter tokens are already in
          this.children.set(key, child);
        }
        node = child;
      }
      nodes[node] = [id, token.length];
      this.maxTokenLength = Math.max(this.maxTokenLength, token.length);
    }
    this.longestId = Int32Array.from(nodes, (x) => x[0]);
    this.longestLength = Int32Array.from(nodes, (x) => x[1]);
  }

  encodeBytes(data) {
    const ids = [];
    const { children, longestId, longestLength } = this;
    let start = 0;
    while (start < data.length) {
      let node = children.get(data[start]); // node 0 is the root, so its children's keys are the byte values
      const end = Math.min(data.length, start + this.maxTokenLength);
      for (let i = start + 1; i < end; i++) {
        const child = children.get(node * 256 + data[i]);
        if (child === undefined) break;
        node = child;
      }
      ids.push(longestId[node]);
      start += longestLength[node];
    }
    return ids;
  }

  decodeBytes(ids) {
    const parts = [];
    for (const id of ids) {
      const token = this.idToBytes.get(id);
      if (token === undefined) throw new TokenizerError(`token id ${id} is not in the vocab of ${this.where}`);
      parts.push(token);
    }
    return concatBytes(parts);
  }

  encode(text) {
    return this.encodeBytes(utf8Encode(text));
  }

  decode(ids) {
    return utf8Decode(this.decodeBytes(ids));
  }
}

/**
 * The tokenizer of a package: `readText(path)` returns the text of a package file (async).
 * Kind "none" gives null (prompts are token ids); kind "hf" is not implemented in JS and throws.
 */
export async function makeTokenizer(info, readText, where = "manifest.json") {
  switch (info.kind) {
    case "bytes":
      return new ByteTokenizer();
    case "none":
      return null;
    case "world": {
      if (!info.files.length) throw new TokenizerError(`${where}: tokenizer kind "world" lists no vocab file`);
      const [text, path] = await readText(info.files[0], MAX_WORLD_BYTES);
      return new WorldTokenizer(text, path);
    }
    case "hf":
      throw new TokenizerError(`${where}: tokenizer kind "hf" (Hugging Face tokenizer.json) is not supported by the JS runtime; pass token ids instead of text`);
    default:
      throw new TokenizerError(`${where}: unknown tokenizer kind ${JSON.stringify(info.kind)}`);
  }
}
