// Reading numpy .npz (a zip of .npy files) from bytes. Pure JS (DataView, DecompressionStream): shared by Node
// and the browser. np.savez stores members uncompressed and with Zip64 extra fields; np.savez_compressed deflates.

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

export class NpzError extends Error {
  constructor(message) {
    super(message);
    this.name = "NpzError";
  }
}

function u64(view, offset) {
  const value = view.getBigUint64(offset, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new NpzError("zip field too large");
  return Number(value);
}

/** Members of a zip file: [{name, method, compressedSize, size, dataOffset}]. */
export function zipEntries(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === EOCD) { eocd = i; break; }
  }
  if (eocd < 0) throw new NpzError("not a zip file (no end of central directory)");
  let count = view.getUint16(eocd + 10, true);
  let cdOffset = view.getUint32(eocd + 16, true);
  if ((count === 0xffff || cdOffset === 0xffffffff) && eocd >= 20 && view.getUint32(eocd - 20, true) === ZIP64_LOCATOR) {
    const z64 = u64(view, eocd - 20 + 8);
    if (view.getUint32(z64, true) !== ZIP64_EOCD) throw new NpzError("broken Zip64 end of central directory");
    count = u64(view, z64 + 32);
    cdOffset = u64(view, z64 + 48);
  }
  const decoder = new TextDecoder();
  const entries = [];
  let p = cdOffset;
  for (let n = 0; n < count; n++) {
    if (p + 46 > bytes.length || view.getUint32(p, true) !== CENTRAL) throw new NpzError("broken central directory");
    const method = view.getUint16(p + 10, true);
    let compressedSize = view.getUint32(p + 20, true);
    let size = view.getUint32(p + 24, true);
    const nameLength = view.getUint16(p + 28, true);
    const extraLength = view.getUint16(p + 30, true);
    const commentLength = view.getUint16(p + 32, true);
    let localOffset = view.getUint32(p + 42, true);
    const name = decoder.decode(bytes.subarray(p + 46, p + 46 + nameLength));
    // Zip64 extra field (id 1): the 64-bit values of exactly those fields that are 0xffffffff, in this order.
    let e = p + 46 + nameLength;
    const extraEnd = e + extraLength;
    while (e + 4 <= extraEnd) {
      const id = view.getUint16(e, true);
      const length = view.getUint16(e + 2, true);
      if (id === 1) {
        let q = e + 4;
        if (size === 0xffffffff) { size = u64(view, q); q += 8; }
        if (compressedSize === 0xffffffff) { compressedSize = u64(view, q); q += 8; }
        if (localOffset === 0xffffffff) { localOffset = u64(view, q); q += 8; }
      }
      e += 4 + length;
    }
    if (view.getUint32(localOffset, true) !== LOCAL) throw new NpzError(`broken local header of ${name}`);
    const dataOffset = localOffset + 30 + view.getUint16(localOffset + 26, true) + view.getUint16(localOffset + 28, true);
    if (dataOffset + compressedSize > bytes.length) throw new NpzError(`member ${name} is truncated`);
    entries.push({ name, method, compressedSize, size, dataOffset });
    p = extraEnd + commentLength;
  }
  return entries;
}

/**
 * Inflate a deflated member into a buffer of its declared size, chunk by chunk: a member that inflates past what
 * it declares (a zip bomb: 1 MB of deflate can claim a few bytes and inflate to gigabytes) is refused as soon as
 * it passes the declared size, never held whole.
 */
async function inflateRaw(data, declared, name) {
  if (typeof DecompressionStream === "undefined") throw new NpzError("deflated member, but this runtime has no DecompressionStream");
  const reader = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw")).getReader();
  const out = new Uint8Array(declared);
  let filled = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (filled + value.length > declared) {
      await reader.cancel().catch(() => {});
      throw new NpzError(`member ${name} inflates past its declared size of ${declared} bytes`);
    }
    out.set(value, filled);
    filled += value.length;
  }
  if (filled !== declared) throw new NpzError(`member ${name} inflates to ${filled} bytes, not its declared ${declared}`);
  return out;
}

/** The bytes of one zip member (stored or deflated), at most `maxBytes` (checked before anything is inflated). */
export async function zipMember(bytes, entry, maxBytes = Infinity) {
  if (entry.size > maxBytes) throw new NpzError(`member ${entry.name} declares ${entry.size} bytes, more than the ${maxBytes} allowed`);
  const data = bytes.subarray(entry.dataOffset, entry.dataOffset + entry.compressedSize);
  if (entry.method === 0) {
    if (entry.compressedSize !== entry.size) throw new NpzError(`member ${entry.name} is stored with ${entry.compressedSize} bytes but declares ${entry.size}`);
    return data;
  }
  if (entry.method === 8) return inflateRaw(data, entry.size, entry.name);
  throw new NpzError(`member ${entry.name} uses unsupported compression method ${entry.method}`);
}

const DTYPES = {
  "<f4": [4, (buf) => new Float32Array(buf)],
  "<f8": [8, (buf) => Float32Array.from(new Float64Array(buf))],
};

/** A .npy array as {shape, data: Float32Array}; little-endian float32 or float64, C order. */
export function parseNpy(bytes, name = "array") {
  if (bytes.length < 10 || bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") {
    throw new NpzError(`${name}: not a .npy array`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw new NpzError(`${name}: unreadable .npy header`);
  if (fortran === "True") throw new NpzError(`${name}: Fortran-order arrays are not supported`);
  if (!Object.prototype.hasOwnProperty.call(DTYPES, descr)) throw new NpzError(`${name}: dtype ${descr} is not supported (float32 or float64 expected)`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const [itemSize, make] = DTYPES[descr];
  const start = headerStart + headerLength;
  if (bytes.length - start < count * itemSize) throw new NpzError(`${name}: data is truncated`);
  const copy = bytes.slice(start, start + count * itemSize); // aligned copy of the data
  return { shape, data: make(copy.buffer) };
}

/**
 * All arrays of an .npz file: {name: {shape, data}} (member "x.npy" is array "x"), each member at most
 * `maxMemberBytes` as declared, checked before it is inflated.
 */
export async function readNpz(bytes, maxMemberBytes = Infinity) {
  const arrays = Object.create(null); // member names are untrusted: "__proto__.npy" must stay an array
  for (const entry of zipEntries(bytes)) {
    if (!entry.name.endsWith(".npy")) continue;
    const name = entry.name.slice(0, -4);
    arrays[name] = parseNpy(await zipMember(bytes, entry, maxMemberBytes), name);
  }
  return arrays;
}
