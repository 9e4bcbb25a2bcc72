"""Is a package (directory or `rwkv-deploy package` archive) exactly what its manifest.json promises?

Runtimes trust manifest.json alone, so every promise in it is checked against what is really there:
file hashes, no stray files, the archive index (PACKAGE.json), and the step graph's I/O names, dtypes,
shapes, opset and external data. Archives are read in place, member by member; nothing is extracted.
Each problem is one line that starts with the file it concerns (a path inside the package).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from rwkv_deploy.errors import RwkvDeployError

from .manifest import FORMAT_VERSION, MANIFEST_NAME, PREFILL_TOKENS_INPUT, GraphInfo, Manifest

# The package layout that these checks enforce and archive.py writes.
INDEX_NAME = "PACKAGE.json"
INDEX_FORMAT = "rwkv-deploy-archive"
INDEX_FORMAT_VERSION = 1
VALIDATION_DIR = "validation/"
ALIGNMENT = 64  # archive member data offsets are multiples of this, so runtimes can map weights in place
BATCH_AXIS = "batch"
TIME_AXIS = "T"  # the prefill graph's sequence axis
TOKEN_DTYPE = "int64"
LOGITS_DTYPE = "float32"
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name length, extra length


class VerifyError(RwkvDeployError):
    """Nothing to verify at the given path (a usage error, not a broken package)."""

    exit_code = 2


def verify_package(path: str | Path) -> list[str]:
    """Every problem with the package directory or archive at `path`, one line each; [] when consistent."""
    path = Path(path)
    if path.is_dir():
        return _verify(_DirReader(path), archive=False)
    if not path.is_file():
        raise VerifyError(f"{path}: no such package directory or archive")
    try:
        with open(path, "rb") as raw, zipfile.ZipFile(path) as zf:
            return _archive_layout_problems(zf, raw) + _verify(_ZipReader(zf), archive=True)
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"{path.name}: not a readable zip archive ({exc})"]


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot be a relative path inside a package (absolute, `..`, ...), or None if it can."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name or "\0" in name:
        return "backslash or NUL in the path"
    if any(part in ("", ".", "..") for part in name.removesuffix("/").split("/")):
        return "empty, '.' or '..' path component"
    return None


# -- reading a package, directory or archive alike ------------------------------------------------------


class _Reader:
    """Files of a package by relative posix name, with each file's (sha256, size) computed at most once."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._digests: dict[str, tuple[str, int]] = {}

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def digest(self, name: str) -> tuple[str, int]:
        """(sha256 hex, size); raises OSError / zipfile.BadZipFile when the file cannot be read."""
        if name not in self._digests:
            h, size = hashlib.sha256(), 0
            with self.open(name) as f:
                while block := f.read(_CHUNK):
                    h.update(block)
                    size += len(block)
            self._digests[name] = (h.hexdigest(), size)
        return self._digests[name]


class _DirReader(_Reader):
    def __init__(self, root: Path) -> None:
        super().__init__(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")


class _ZipReader(_Reader):
    def __init__(self, zf: zipfile.ZipFile) -> None:
        super().__init__([i.filename for i in zf.infolist() if not i.is_dir()])
        self.zf = zf

    def open(self, name: str) -> BinaryIO:
        return self.zf.open(name)  # type: ignore[return-value]


# -- the checks -----------------------------------------------------------------------------------------


def _verify(reader: _Reader, archive: bool) -> list[str]:
    manifest, problems = _read_manifest(reader)
    if manifest is not None:
        problems += _listed_file_problems(reader, manifest)
        problems += _unlisted_file_problems(reader, manifest)
        problems += _reference_problems(reader, manifest)
        problems += _graph_problems(reader, manifest)
        problems += _initial_state_problems(reader, manifest)
    if archive or INDEX_NAME in reader.names:
        problems += _index_problems(reader)
    return problems


def _read_manifest(reader: _Reader) -> tuple[Manifest | None, list[str]]:
    if MANIFEST_NAME not in reader.names:
        return None, [f"{MANIFEST_NAME}: missing (not an rwkv-deploy package)"]
    try:
        data = json.loads(reader.read(MANIFEST_NAME))
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            return None, [f"{MANIFEST_NAME}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"]
        return Manifest.from_dict(data), []
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return None, [f"{MANIFEST_NAME}: unreadable ({exc})"]
    except (KeyError, TypeError, AttributeError) as exc:
        return None, [f"{MANIFEST_NAME}: malformed ({type(exc).__name__}: {exc})"]


def _hash_problem(reader: _Reader, name: str, sha256: str, size: int | None, listed_in: str) -> str | None:
    if name not in reader.names:
        return f"{name}: listed in {listed_in} but missing"
    try:
        got_sha, got_size = reader.digest(name)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{name}: unreadable ({exc})"
    if size is not None and got_size != size:
        return f"{name}: {got_size} bytes but {listed_in} says {size}"
    if got_sha != sha256:
        return f"{name}: sha256 does not match {listed_in} (file changed or corrupt)"
    return None


def _listed_file_problems(reader: _Reader, manifest: Manifest) -> list[str]:
    problems = []
    for name, sha256 in manifest.files.items():
        if bad := member_name_problem(name):
            problems.append(f"{MANIFEST_NAME}: files entry {name!r} is not a safe relative path ({bad})")
        elif problem := _hash_problem(reader, name, sha256, None, MANIFEST_NAME):
            problems.append(problem)
    return problems


def _unlisted_file_problems(reader: _Reader, manifest: Manifest) -> list[str]:
    known = set(manifest.files) | {MANIFEST_NAME, INDEX_NAME}
    return [f"{name}: not listed in {MANIFEST_NAME} files (unexpected file in the package)"
            for name in reader.names if name not in known and not name.startswith(VALIDATION_DIR)]


def _referenced_files(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(field, file) for every file the manifest points a runtime to."""
    for key, graph in manifest.graphs.items():
        yield f"graphs.{key}.path", graph.path
        if graph.external_data:
            yield f"graphs.{key}.external_data", _sibling(graph.path, graph.external_data)
    for name in manifest.tokenizer.files:
        yield "tokenizer.files", name
    for entry in manifest.state:
        if entry.init_file:
            yield f"state {entry.name!r} init_file", entry.init_file


def _reference_problems(reader: _Reader, manifest: Manifest) -> list[str]:
    """Files the manifest points to must be listed in `files` (hashed) and present; the state must be batched."""
    problems = [] if "step" in manifest.graphs else [f"{MANIFEST_NAME}: graphs has no 'step' graph"]
    for field, name in _referenced_files(manifest):
        if name not in manifest.files:
            problems.append(f"{MANIFEST_NAME}: {field} {name!r} is not listed in files (its hash cannot be checked)")
            if name not in reader.names:
                problems.append(f"{name}: named by {MANIFEST_NAME} {field} but missing")
    for entry in manifest.state:
        if not entry.shape or entry.shape[0] != BATCH_AXIS or not all(
                isinstance(d, int) and d > 0 for d in entry.shape[1:]):
            problems.append(f"{MANIFEST_NAME}: state {entry.name!r} shape {_fmt(entry.shape)} must be "
                            f"[{BATCH_AXIS}, positive ints...]")
    return problems


def _sibling(graph_path: str, name: str) -> str:
    """ONNX resolves external data locations relative to the graph file's folder."""
    folder = graph_path.rpartition("/")[0]
    return f"{folder}/{name}" if folder else name


def _graph_problems(reader: _Reader, manifest: Manifest) -> list[str]:
    problems = []
    for kind, graph in manifest.graphs.items():
        if graph.path not in reader.names:
            continue  # reported as missing by the file checks
        try:
            with reader.open(graph.path) as f:
                model = onnx.load_model(f, load_external_data=False)
        except (OSError, zipfile.BadZipFile, DecodeError, ValueError) as exc:
            problems.append(f"{graph.path}: not a readable ONNX model ({type(exc).__name__}: {exc})")
            continue
        want_in, want_out = _expected_io(kind, graph, manifest)
        weights = {t.name for t in model.graph.initializer}  # old IR versions also list initializers as inputs
        inputs = [v for v in model.graph.input if v.name not in weights]
        problems += (_io_problems(graph.path, "input", inputs, want_in)
                     + _io_problems(graph.path, "output", list(model.graph.output), want_out)
                     + _opset_problems(graph, model)
                     + _external_data_problems(reader, graph, model))
    return problems


def _expected_io(kind: str, graph: GraphInfo, manifest: Manifest) -> tuple[list[tuple], list[tuple]]:
    """(name, dtype, shape) of each input and output the manifest promises for the graph `kind`.

    step: token [batch]; prefill: tokens [batch, T], logits of the last position or of all T positions."""
    vocab = manifest.model.vocab_size
    state_in = [(s.input, s.dtype, list(s.shape)) for s in manifest.state]
    state_out = [(s.output, s.dtype, list(s.shape)) for s in manifest.state]
    if kind == "prefill":
        logits = [BATCH_AXIS, TIME_AXIS, vocab] if graph.logits == "all" else [BATCH_AXIS, vocab]
        return ([(PREFILL_TOKENS_INPUT, TOKEN_DTYPE, [BATCH_AXIS, TIME_AXIS])] + state_in,
                [(manifest.logits_output, LOGITS_DTYPE, logits)] + state_out)
    return ([(manifest.token_input, TOKEN_DTYPE, [BATCH_AXIS])] + state_in,
            [(manifest.logits_output, LOGITS_DTYPE, [BATCH_AXIS, vocab])] + state_out)


def _io_problems(where: str, kind: str, actual: list[onnx.ValueInfoProto],
                 expected: list[tuple[str, str, list]]) -> list[str]:
    by_name = {v.name: v for v in actual}
    want_names = [name for name, _, _ in expected]
    problems = [f"{where}: graph has no {kind} {name!r} (manifest.json expects it)"
                for name in want_names if name not in by_name]
    problems += [f"{where}: graph {kind} {v.name!r} is not declared in manifest.json"
                 for v in actual if v.name not in want_names]
    if not problems and [v.name for v in actual] != want_names:
        problems.append(f"{where}: graph {kind}s are not in manifest.json's order (token/logits, then state)")
    for name, dtype, shape in expected:
        if name in by_name:
            got_dtype, got_shape = _tensor_type(by_name[name])
            if got_dtype != dtype:
                problems.append(f"{where}: {kind} {name!r} is {got_dtype}, expected {dtype}")
            if got_shape != shape:
                problems.append(f"{where}: {kind} {name!r} has shape {_fmt(got_shape)}, expected {_fmt(shape)}")
    return problems


def _tensor_type(value: onnx.ValueInfoProto) -> tuple[str, list | None]:
    """(dtype name as numpy spells it, dims: symbolic names as str, fixed sizes as int, "?" when unknown)."""
    if value.type.WhichOneof("value") != "tensor_type":
        return f"non-tensor ({value.type.WhichOneof('value')})", None
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    if not tensor.HasField("shape"):
        return dtype, None
    return dtype, [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else "?"
                   for d in tensor.shape.dim]


def _opset_problems(graph: GraphInfo, model: onnx.ModelProto) -> list[str]:
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    got = opsets.get("ai.onnx")
    if got == graph.opset:
        return []
    return [f"{graph.path}: graph uses opset {got} but manifest.json graphs.step.opset is {graph.opset}"]


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and constant attributes, subgraphs (If/Loop bodies) included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(sub)


def _external_data_problems(reader: _Reader, graph: GraphInfo, model: onnx.ModelProto) -> list[str]:
    locations = {entry.value for t in _graph_tensors(model.graph)
                 if t.data_location == onnx.TensorProto.EXTERNAL
                 for entry in t.external_data if entry.key == "location"}
    declared = graph.external_data
    problems = [f"{graph.path}: weights are stored in external file {loc!r} that manifest.json "
                f"graphs.step.external_data does not declare ({declared!r})"
                for loc in sorted(locations) if loc != declared]
    if declared and declared not in locations:
        problems.append(f"{graph.path}: manifest.json declares external data {declared!r} but the graph has none there")
    for loc in sorted(locations):
        if _sibling(graph.path, loc) not in reader.names:
            problems.append(f"{_sibling(graph.path, loc)}: external data of {graph.path} but missing")
    return problems


def _initial_state_problems(reader: _Reader, manifest: Manifest) -> list[str]:
    """Each `init_file` array exists with the state's per-sequence shape and dtype (no batch axis)."""
    problems, cache = [], {}
    for entry in manifest.state:
        name = entry.init_file
        if not name or name not in reader.names:
            continue  # no file to read, or reported as missing
        try:
            if name not in cache:
                cache[name] = np.load(io.BytesIO(reader.read(name)), allow_pickle=False)
            arrays = cache[name]
            if entry.name not in arrays.files:
                problems.append(f"{name}: has no array {entry.name!r} (state {entry.name!r} init_file)")
                continue
            array = arrays[entry.name]
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            problems.append(f"{name}: unreadable .npz ({exc})")
            continue
        want = list(entry.shape[1:])
        if list(array.shape) != want or array.dtype.name != entry.dtype:
            problems.append(f"{name}: array {entry.name!r} is {array.dtype.name} {_fmt(list(array.shape))}, "
                            f"expected {entry.dtype} {_fmt(want)}")
    return problems


def _index_problems(reader: _Reader) -> list[str]:
    if INDEX_NAME not in reader.names:
        return [f"{INDEX_NAME}: missing (an archive lists and hashes every member there)"]
    try:
        index = json.loads(reader.read(INDEX_NAME))
        if (index.get("format"), index.get("format_version")) != (INDEX_FORMAT, INDEX_FORMAT_VERSION):
            return [f"{INDEX_NAME}: not a {INDEX_FORMAT} version {INDEX_FORMAT_VERSION} index"]
        members = {name: (entry["sha256"], int(entry["size"])) for name, entry in index["members"].items()}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return [f"{INDEX_NAME}: unreadable ({exc})"]
    except (KeyError, TypeError, AttributeError) as exc:
        return [f"{INDEX_NAME}: malformed ({type(exc).__name__}: {exc})"]
    problems = [p for name, (sha256, size) in members.items()
                if (p := _hash_problem(reader, name, sha256, size, INDEX_NAME))]
    problems += [f"{name}: not listed in {INDEX_NAME}" for name in reader.names
                 if name != INDEX_NAME and name not in members]
    return problems


def _archive_layout_problems(zf: zipfile.ZipFile, raw: BinaryIO) -> list[str]:
    """Safe names, no duplicates or links, stored members at aligned offsets (docs/manifest.md, archive)."""
    problems, seen = [], set()
    for info in zf.infolist():
        name = info.filename
        if bad := member_name_problem(name):
            problems.append(f"{name}: unsafe member name ({bad})")
        if name in seen:
            problems.append(f"{name}: appears twice in the archive")
        seen.add(name)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{name}: is a symbolic link")
        if info.compress_type != zipfile.ZIP_STORED:
            problems.append(f"{name}: compressed; members must be stored so runtimes can read them in place")
        elif (offset := _data_offset(raw, info)) is None:
            problems.append(f"{name}: bad local file header")
        elif offset % ALIGNMENT:
            problems.append(f"{name}: data starts at offset {offset}, not a multiple of {ALIGNMENT}")
    return problems


def _data_offset(raw: BinaryIO, info: zipfile.ZipInfo) -> int | None:
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        return None
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        return None
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _fmt(shape: list | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
