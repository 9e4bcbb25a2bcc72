"""manifest.json and PACKAGE.json as untrusted bytes -> typed data, or one line saying what is wrong.

The only parser of these files. It reads at most `limits.JSON_BYTES` bytes (the caller streams them through
`read_capped`), refuses nesting deeper than `limits.JSON_DEPTH` before the JSON parser sees it (no
RecursionError), duplicate keys, NaN/Infinity and invalid UTF-8, then checks every field's type, range and
size and builds the dataclasses of `manifest.py`. Nothing but `SchemaError` (a ManifestError: exit code 2)
ever leaves it, whatever the input. Every path the manifest names must be a safe relative path
(`path_problem`); whether it is listed, present and a regular file is checked by `trust.py`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from rwkv_deploy import limits

from .manifest import (CpuGraphEntry, EngineEntry, GraphInfo, Manifest, ManifestError, ModelInfo, StateEntry,
                       TokenizerInfo,
                       external_data_path)
from .names import (BATCH_AXIS, FORMAT_VERSION, INDEX_FORMAT, INDEX_FORMAT_VERSION, INDEX_NAME,
                    LOGITS_OUTPUT, MANIFEST_NAME, PREFILL_LOGITS, STEP_GRAPH, TOKEN_INPUT, state_input, state_output)

VERSIONS = ("4", "5.0", "5.1", "5.2", "6", "7")
TOKENIZER_KINDS = ("world", "hf", "bytes", "none")
STATE_DTYPES = ("float32",)  # format 1: the recurrent state is fp32 (docs/manifest.md)
MAX_DIMS = 8
MAX_DIM = 1 << 31
MAX_PATH = 1024
MAX_NAME = 256
MAX_OPSET = 100
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GRAPH_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A state name becomes graph input/output names, a Triton initial-state file name and config.pbtxt text, a
# key of state files: letters, digits, `_ . -`, not starting with `.` or `-`, no `..` (fullmatch: no newline)
STATE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PRECISION = re.compile(r"[a-z0-9]{1,16}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class SchemaError(ManifestError):
    """The file is not valid JSON of the expected schema; the message names the file and the field."""


# -- bounded JSON ------------------------------------------------------------------------------------------


def read_capped(stream: BinaryIO, where: str, limit: int = limits.JSON_BYTES) -> bytes:
    """At most `limit` bytes of `stream` (a file or an archive member, decompressed as it is read);
    SchemaError when there is more, before reading it."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise SchemaError(f"{where}: larger than {limit // limits.MIB} MiB; refusing to read it (a real one is "
                          "a few KB)")
    return data


def nesting_depth(data: bytes) -> int:
    """How deeply objects and arrays nest in the JSON text `data` (strings skipped), in one vectorised pass."""
    stripped = _STRING.sub(b'""', data)
    codes = np.frombuffer(stripped, dtype=np.uint8)
    steps = np.zeros(codes.shape, dtype=np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, where: str, limit: int = limits.JSON_BYTES) -> Any:
    """The JSON value of `data`, or SchemaError naming `where` (size, nesting, UTF-8, syntax, duplicate keys)."""
    if len(data) > limit:
        raise SchemaError(f"{where}: larger than {limit // limits.MIB} MiB; refusing to read it")
    depth = nesting_depth(data)
    if depth > limits.JSON_DEPTH:
        raise SchemaError(f"{where}: JSON nested {depth} levels deep (at most {limits.JSON_DEPTH} allowed)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{where}: not valid JSON ({exc})") from None


# -- field checks -----------------------------------------------------------------------------------------


def path_problem(name: str) -> str | None:
    """Why `name` cannot be a relative path inside a package (absolute, `..`, ...), or None if it can."""
    if not name:
        return "empty path"
    if len(name) > MAX_PATH:
        return f"longer than {MAX_PATH} characters"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name or "\0" in name or any(ord(c) < 32 for c in name):
        return "backslash or control character in the path"
    if any(part in ("", ".", "..") for part in name.removesuffix("/").split("/")):
        return "empty, '.' or '..' path component"
    return None


@dataclass(frozen=True)
class _At:
    """Where a value sits, for messages: `manifest.json: state[3].shape`."""

    file: str
    field: str = ""

    def __truediv__(self, key: str | int) -> "_At":
        part = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.field else key)
        return _At(self.file, self.field + part)

    def fail(self, problem: str) -> SchemaError:
        return SchemaError(f"{self.file}: {self.field or 'the file'} {problem}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _object(value: Any, at: _At, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise at.fail(f"must be an object, not {_type_name(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise at.fail(f"lacks the field {missing[0]!r}")
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        raise at.fail(f"has an unknown field {unknown[0][:40]!r}")
    return value


def _int(value: Any, at: _At, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass, 1.0 is a float: both refused
        raise at.fail(f"must be an integer, not {_type_name(value)}")
    if not low <= value <= high:
        raise at.fail(f"is {value}, outside {low}..{high}")
    return value


def _optional_int(value: Any, at: _At, low: int, high: int) -> int | None:
    return None if value is None else _int(value, at, low, high)


def _number(value: Any, at: _At) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise at.fail(f"must be a finite number, not {_type_name(value)} {str(value)[:20]}")
    return float(value)


def _string(value: Any, at: _At, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = (),
            max_length: int = MAX_NAME) -> str:
    if not isinstance(value, str):
        raise at.fail(f"must be a string, not {_type_name(value)}")
    if choices and value not in choices:
        raise at.fail(f"is {value[:40]!r}, not one of {', '.join(choices)}")
    if not value or len(value) > max_length or (pattern is not None and not pattern.fullmatch(value)):
        raise at.fail(f"{value[:40]!r} is not an allowed value")
    return value


def _path(value: Any, at: _At) -> str:
    name = _string(value, at, max_length=MAX_PATH)
    if problem := path_problem(name):
        raise at.fail(f"{name[:80]!r} is not a safe relative path inside the package ({problem})")
    if name in (MANIFEST_NAME, INDEX_NAME):
        raise at.fail(f"{name!r} names the package's own {name}")
    return name


def _list(value: Any, at: _At, max_length: int) -> list[Any]:
    if not isinstance(value, list):
        raise at.fail(f"must be an array, not {_type_name(value)}")
    if len(value) > max_length:
        raise at.fail(f"has {len(value)} entries, more than {max_length}")
    return value


# -- manifest.json ----------------------------------------------------------------------------------------

_TOP = ("model", "graphs", "state", "tokenizer", "files", "token_input", "logits_output", "format_version")
_TOP_OPTIONAL = ("producer", "source", "engines", "cpu_graphs")


def manifest_from_json(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """The typed manifest of the JSON value `data`; SchemaError names the first field that is wrong."""
    at = _At(where)
    if isinstance(data, dict) and "format_version" in data and (
            type(data["format_version"]) is not int or data["format_version"] != FORMAT_VERSION):
        raise SchemaError(f"{where}: format_version {data['format_version']!r} is not supported (this rwkv-deploy "
                          f"reads {FORMAT_VERSION})")
    top = _object(data, at, _TOP, _TOP_OPTIONAL)
    model = _model(top["model"], at / "model")
    token_input = _string(top["token_input"], at / "token_input")
    logits_output = _string(top["logits_output"], at / "logits_output")
    if (token_input, logits_output) != (TOKEN_INPUT, LOGITS_OUTPUT):
        raise at.fail(f"token_input/logits_output must be {TOKEN_INPUT!r}/{LOGITS_OUTPUT!r} in format "
                      f"{FORMAT_VERSION}")
    graphs = _graphs(top["graphs"], at / "graphs")
    state = _state(top["state"], at / "state", model.n_layer)
    tokenizer = _tokenizer(top["tokenizer"], at / "tokenizer", model.vocab_size)
    files = _files(top["files"], at / "files")
    producer = _free_object(top.get("producer", {}), at / "producer")
    source = _free_object(top.get("source", {}), at / "source")
    eps = source.get("ln_x_eps")
    if eps is not None and not (_number(eps, at / "source" / "ln_x_eps") > 0):
        raise (at / "source" / "ln_x_eps").fail("must be positive")
    engines = _engines(top.get("engines", {}), at / "engines", graphs)
    cpu_graphs = _cpu_graphs(top.get("cpu_graphs", {}), at / "cpu_graphs", graphs, files)
    return Manifest(model=model, graphs=graphs, state=state, tokenizer=tokenizer, files=files,
                    token_input=token_input, logits_output=logits_output, format_version=FORMAT_VERSION,
                    producer=producer, source=source, engines=engines, cpu_graphs=cpu_graphs)


def _model(value: Any, at: _At) -> ModelInfo:
    fields = ("version", "n_layer", "n_embd", "n_head", "head_size", "vocab_size", "ffn_size")
    m = _object(value, at, fields, ("lora",))
    lora = _free_object(m.get("lora", {}), at / "lora")
    for key, size in lora.items():
        _int(size, at / "lora" / key, 0, limits.MAX_WIDTH)
    return ModelInfo(
        version=_string(m["version"], at / "version", choices=VERSIONS),
        n_layer=_int(m["n_layer"], at / "n_layer", 1, limits.MAX_LAYERS),
        n_embd=_int(m["n_embd"], at / "n_embd", 1, limits.MAX_WIDTH),
        n_head=_optional_int(m["n_head"], at / "n_head", 1, limits.MAX_WIDTH),
        head_size=_optional_int(m["head_size"], at / "head_size", 1, limits.MAX_WIDTH),
        vocab_size=_int(m["vocab_size"], at / "vocab_size", 1, limits.MAX_VOCAB),
        ffn_size=_int(m["ffn_size"], at / "ffn_size", 1, 64 * limits.MAX_WIDTH),
        lora=lora)


def _graphs(value: Any, at: _At) -> dict[str, GraphInfo]:
    if not isinstance(value, dict):
        raise at.fail(f"must be an object, not {_type_name(value)}")
    if STEP_GRAPH not in value:
        raise at.fail(f"has no {STEP_GRAPH!r} graph (has: {', '.join(list(value)[:4]) or 'none'})")
    if len(value) > 16:
        raise at.fail(f"has {len(value)} graphs, more than 16")
    graphs = {}
    for name, entry in value.items():
        where = at / _string(name, at, _GRAPH_NAME)
        g = _object(entry, where, ("path", "precision", "opset"), ("external_data", "quantization", "logits"))
        path = _path(g["path"], where / "path")
        external = g.get("external_data")
        if external is not None:
            external = _external_data(external, where / "external_data", path)
        logits = g.get("logits")
        if logits is not None:
            _string(logits, where / "logits", choices=PREFILL_LOGITS)
        quantization = g.get("quantization")
        if quantization is not None:
            quantization = _free_object(quantization, where / "quantization")
        graphs[name] = GraphInfo(path=path, precision=_string(g["precision"], where / "precision", _PRECISION),
                                 opset=_int(g["opset"], where / "opset", 1, MAX_OPSET), external_data=external,
                                 quantization=quantization, logits=logits)
    return graphs


def _external_data(value: Any, at: _At, graph_path: str) -> str:
    """A graph's external data file name: resolved in the graph's folder (as ONNX does), a safe package path."""
    name = _string(value, at, max_length=MAX_PATH)
    if problem := path_problem(external_data_path(graph_path, name)):
        raise at.fail(f"{name[:80]!r} is not a safe relative path ({problem})")
    return name


def _state(value: Any, at: _At, n_layer: int) -> list[StateEntry]:
    entries = _list(value, at, 16 * n_layer + 16)
    if not entries:
        raise at.fail("is empty (a recurrent model has state)")
    state, seen, total = [], set(), 0
    for i, raw in enumerate(entries):
        where = at / i
        s = _object(raw, where, ("name", "input", "output", "shape", "dtype", "init"), ("init_file",))
        name = _string(s["name"], where / "name", STATE_NAME)
        if name in seen:
            raise (where / "name").fail(f"{name!r} appears twice")
        seen.add(name)
        if s["input"] != state_input(name) or s["output"] != state_output(name):
            raise where.fail(f"input/output must be {state_input(name)!r}/{state_output(name)!r}")
        shape = _list(s["shape"], where / "shape", MAX_DIMS)
        if not shape or shape[0] != BATCH_AXIS:
            raise (where / "shape").fail(f"must start with {BATCH_AXIS!r}")
        dims = [_int(d, where / "shape" / (k + 1), 1, MAX_DIM) for k, d in enumerate(shape[1:])]
        dtype = _string(s["dtype"], where / "dtype", choices=STATE_DTYPES)
        total += math.prod(dims) * np.dtype(dtype).itemsize
        init_file = s.get("init_file")
        state.append(StateEntry(name=name, input=s["input"], output=s["output"], shape=[BATCH_AXIS, *dims],
                                dtype=dtype, init=_number(s["init"], where / "init"),
                                init_file=None if init_file is None else _path(init_file, where / "init_file")))
    cap = limits.max_state_bytes()
    if total > cap:
        raise at.fail(f"declares {total / limits.GIB:.1f} GiB of state per sequence, more than the "
                      f"{cap / limits.GIB:.1f} GiB cap (raise it with {limits.STATE_BYTES_ENV})")
    return state


def _tokenizer(value: Any, at: _At, vocab_size: int) -> TokenizerInfo:
    t = _object(value, at, ("kind",), ("files", "eos_token_id"))
    kind = _string(t["kind"], at / "kind", choices=TOKENIZER_KINDS)
    files = [_path(f, at / "files" / i) for i, f in enumerate(_list(t.get("files", []), at / "files", 16))]
    wanted = {"hf": (1, 1), "world": (0, 1), "bytes": (0, 0), "none": (0, 0)}[kind]
    if not wanted[0] <= len(files) <= wanted[1]:
        raise (at / "files").fail(f"has {len(files)} entries; tokenizer kind {kind!r} takes "
                                  f"{wanted[0] if wanted[0] == wanted[1] else f'{wanted[0]} or {wanted[1]}'}")
    eos = _optional_int(t.get("eos_token_id"), at / "eos_token_id", 0, vocab_size - 1)
    needed = {"world": 65536, "bytes": 256}.get(kind, 0)  # the ids these tokenizers emit
    if vocab_size < needed:
        raise at.fail(f"kind {kind!r} emits ids up to {needed - 1}, but the model's vocab_size is {vocab_size}")
    return TokenizerInfo(kind=kind, files=files, eos_token_id=eos)


def _sha256(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise at.fail("must be a lowercase hex sha256 (64 characters)")
    return value


def _files(value: Any, at: _At) -> dict[str, str]:
    if not isinstance(value, dict):
        raise at.fail(f"must be an object, not {_type_name(value)}")
    for name, digest in value.items():
        _path(name, at)
        _sha256(digest, at / name[:80])
    return dict(value)


def _free_object(value: Any, at: _At) -> dict[str, Any]:
    """An informational object: any JSON inside (already bounded in size and depth)."""
    if not isinstance(value, dict):
        raise at.fail(f"must be an object, not {_type_name(value)}")
    return value


def _per_graph(value: Any, at: _At, graphs: dict[str, GraphInfo], what: str) -> Iterator[tuple[str, Any, _At]]:
    """(graph name, entry, its place) of a section keyed by the package's graphs (engines, CPU graphs)."""
    if not isinstance(value, dict):
        raise at.fail(f"must be an object, not {_type_name(value)}")
    for graph, entry in value.items():
        where = at / _string(graph, at, _GRAPH_NAME)
        if graph not in graphs:
            raise where.fail(f"is {what} of {graph!r}, which is not in graphs")
        yield graph, entry, where


def _engines(value: Any, at: _At, graphs: dict[str, GraphInfo]) -> dict[str, EngineEntry]:
    """The TensorRT engines section: per graph of `graphs`, its plan and record (package paths) and what the
    plan needs to run (package/engines.py reads the rest)."""
    if value is None:
        return {}
    engines = {}
    for graph, entry, where in _per_graph(value, at, graphs, "an engine"):
        e = _object(entry, where, ("plan", "info", "library", "version"), ("targets",))
        targets = [_string(t, where / "targets" / i, max_length=16)
                   for i, t in enumerate(_list(e.get("targets", []), where / "targets", 64))]
        engines[graph] = EngineEntry(plan=_path(e["plan"], where / "plan"), info=_path(e["info"], where / "info"),
                                     library=_string(e["library"], where / "library", re.compile(r"[a-z_]{1,32}")),
                                     version=_string(e["version"], where / "version", max_length=64),
                                     targets=targets)
    return engines


def _cpu_graphs(value: Any, at: _At, graphs: dict[str, GraphInfo], files: dict[str, str]) -> dict[str, CpuGraphEntry]:
    """The CPU target graphs section: per graph of `graphs`, the derived graph and its weights (package paths),
    the operators it needs and the source graph it was made from: that graph as `files` lists it now (a graph
    replaced since is refused here, not run beside a CPU graph made from its predecessor)."""
    entries = {}
    for graph, entry, where in _per_graph(value, at, graphs, "a CPU graph"):
        e = _object(entry, where, ("path", "external_data", "ops", "ops_version", "source", "source_sha256"))
        digest = _sha256(e["source_sha256"], where / "source_sha256")
        path, source = _path(e["path"], where / "path"), _path(e["source"], where / "source")
        if source != graphs[graph].path:
            raise (where / "source").fail(f"is {source[:80]!r}, not the {graph} graph {graphs[graph].path!r}")
        if files.get(source) != digest:
            raise (where / "source_sha256").fail(f"is not the sha256 of {source[:80]!r} in files: the CPU graph was "
                                                 "made from another graph; run `rwkv-deploy build-cpu` again")
        entries[graph] = CpuGraphEntry(
            path=path, external_data=_external_data(e["external_data"], where / "external_data", path),
            ops=_string(e["ops"], where / "ops", re.compile(r"[a-z0-9_.]{1,64}")),
            ops_version=_int(e["ops_version"], where / "ops_version", 1, 1 << 20),
            source=source, source_sha256=digest)
    return entries


def parse_manifest(data: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """manifest.json bytes -> Manifest; SchemaError (one line) for anything else."""
    return manifest_from_json(parse_json(data, where), where)


# -- PACKAGE.json (the archive index) ---------------------------------------------------------------------


def index_from_json(data: Any, where: str = INDEX_NAME) -> dict[str, tuple[str, int]]:
    """{member name: (sha256, size)} of an archive index; SchemaError names what is wrong."""
    at = _At(where)
    if not isinstance(data, dict) or (data.get("format"), data.get("format_version")) != (
            INDEX_FORMAT, INDEX_FORMAT_VERSION) or type(data.get("format_version")) is not int:
        raise SchemaError(f"{where}: not a {INDEX_FORMAT} version {INDEX_FORMAT_VERSION} index")
    top = _object(data, at, ("format", "format_version", "members"), ("created_by", "alignment"))
    members = top["members"]
    if not isinstance(members, dict):
        raise (at / "members").fail(f"must be an object, not {_type_name(members)}")
    result = {}
    for name, entry in members.items():
        where_m = at / "members" / name[:80]
        if problem := path_problem(name):
            raise where_m.fail(f"is not a safe relative path ({problem})")
        e = _object(entry, where_m, ("size", "sha256"))
        result[name] = (_sha256(e["sha256"], where_m / "sha256"), _int(e["size"], where_m / "size", 0, 1 << 48))
    return result


def parse_index(data: bytes, where: str = INDEX_NAME) -> dict[str, tuple[str, int]]:
    return index_from_json(parse_json(data, where), where)


def parse_json_object(data: bytes, where: str, check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Any other small JSON file we read from a package (engine.json): bounded, and an object."""
    value = parse_json(data, where)
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: must be a JSON object, not {_type_name(value)}")
    if check is not None:
        check(value)
    return value
