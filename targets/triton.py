"""A Triton Inference Server model repository made from a verified package.

    OUT/<name>/config.pbtxt                onnxruntime backend, sequence batcher, implicit state
    OUT/<name>/initial_state/<state>.bin   raw little-endian initial values of the non-zero states
    OUT/<name>/1/model.onnx                the step graph plus the START and READY control inputs
    OUT/<name>/1/<external data>           the graph's weights file, when the package has one
    OUT/<name>_trt/...                     the same for the package's TensorRT plan (model.plan), when it has one

How the package's contract maps onto Triton (checked against Triton's docs and backend sources, and run on
a real `tritonserver` by tests/deploy/test_triton_server.py):

- Implicit state: every manifest state entry is one `sequence_batching.state` (input `state_in.<name>`,
  output `state_out.<name>`, dims without the batch axis). Triton keeps each sequence's state between its
  requests and feeds the output of request i as the input of request i+1; the client sends only tokens.
- Initial state: Triton fills the state of a sequence's first request from `initial_state`: `zero_data` for
  entries whose `init` is 0, otherwise `data_file` (v4 `att_pp` = -1e30, state-tuned `init_file` arrays).
  Triton reads data files from `initial_state/` in the *model* directory (next to config.pbtxt; the
  server skips that folder when it looks for versions), as raw bytes in row-major order, at least
  elements x dtype size long.
- Control inputs: the onnxruntime backend refuses a configured control that is not an input of the ONNX
  model, and wants it with dims [1] after the batch axis. So the repository holds a Triton-only copy of the
  graph with two extra int32 inputs START and READY of shape [batch, 1] that no node reads (the initial
  state already arrives through `initial_state`, and with the Oldest strategy every batched request is
  ready); the exported package itself is never changed. The copy also refuses negative tokens, which ONNX's
  Gather would otherwise take as counted from the end of the vocabulary (see `graph_with_controls`). The TensorRT model has no control inputs (the
  plan was built from the package graph, and controls are optional for the sequence batcher).
- Batching: the Oldest strategy forms dynamic batches (up to `max_batch_size`, waiting up to
  `max_queue_delay_microseconds` for a preferred size) from up to `max_candidate_sequences` live
  sequences per model instance; further sequences wait in a backlog until one ends or idles out. Triton
  requires batch-1 requests for sequence models.
- Token input: the graph takes int64 [batch], i.e. no dims beyond the batch axis; Triton wants non-empty
  dims, so the config says dims [1] with `reshape { shape: [] }` and clients send shape [1, 1].
- Instances: `instance_group` says how many copies of the model run and where (CPU or GPU); the ONNX model's
  `parameters` set ONNX Runtime's intra-op and inter-op threads per instance. On CPU the default is one
  instance with 1 + 1 threads: on a 2-core machine that served 8 sequences about 3x faster than Triton's
  own default (two instances with ONNX Runtime's default threads, which oversubscribe the cores).
  The TensorRT plan runs on the GPU whatever the ONNX model's kind.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest import MANIFEST_NAME, Manifest, StateEntry
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.package.names import STEP_GRAPH
from rwkv_deploy.staging import staged_directory, staged_files

ONNX_MODEL_FILE = "model.onnx"
PLAN_MODEL_FILE = "model.plan"
INITIAL_STATE_DIR = "initial_state"
VERSION = "1"
TRT_SUFFIX = "_trt"
START_INPUT, READY_INPUT = "START", "READY"
GUARD_PREFIX = "triton_token_guard/"  # tensors and nodes of the negative-token guard (graph_with_controls)
GUARD_TOKEN = GUARD_PREFIX + "token"
_GUARD_NAMES = (GUARD_TOKEN, GUARD_PREFIX + "zero", GUARD_PREFIX + "vocab_size", GUARD_PREFIX + "negative",
                GUARD_PREFIX + "shifted")

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_PREFERRED_BATCH_SIZES = (4, 8)
DEFAULT_MAX_QUEUE_DELAY_US = 500
DEFAULT_MAX_SEQUENCES = 32
DEFAULT_SEQUENCE_IDLE_US = 30_000_000
MAX_SEQUENCE_IDLE_US = 2**63 - 1  # Triton's field is uint64; bounded to what every reader takes
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
CPU_THREADS_DEFAULT = 1  # ONNX Runtime intra-op and inter-op threads per CPU instance unless told otherwise
# upper bounds on the numbers written into config.pbtxt: far above any real deployment, low enough that Triton
# does not try to start a billion instances or threads from a typo
MAX_INSTANCES = 1024
MAX_THREADS = 1024
MAX_BATCH = 1 << 16
MAX_QUEUE_DELAY_US = 60_000_000
MAX_SEQUENCES = 1 << 16

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "bool": "TYPE_BOOL"}
_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: a trailing newline fails


class TritonError(RefusedError):
    """The repository cannot be written: bad options, an unusable package, or the output exists."""


# -- the configuration as data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching limits of the sequence batcher (Oldest strategy)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    preferred_batch_sizes: tuple[int, ...] = DEFAULT_PREFERRED_BATCH_SIZES
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    max_sequences: int = DEFAULT_MAX_SEQUENCES  # max_candidate_sequences: live sequences per model instance
    sequence_idle_us: int = DEFAULT_SEQUENCE_IDLE_US  # a sequence idle this long is ended and its state dropped

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= MAX_BATCH:
            raise TritonError(f"max batch size {self.max_batch_size}: must be between 1 and {MAX_BATCH}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise TritonError(f"preferred batch size {bad[0]}: must be between 1 and the max batch size "
                              f"({self.max_batch_size})")
        if not 0 <= self.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
            raise TritonError(f"max queue delay {self.max_queue_delay_us} us: must be between 0 and "
                              f"{MAX_QUEUE_DELAY_US}")
        if not 1 <= self.max_sequences <= MAX_SEQUENCES:
            raise TritonError(f"max sequences {self.max_sequences}: must be between 1 and {MAX_SEQUENCES}")
        if not 1 <= self.sequence_idle_us <= MAX_SEQUENCE_IDLE_US:
            raise TritonError(f"sequence idle timeout {self.sequence_idle_us} us: must be positive")

    def capped(self, max_batch_size: int) -> "BatchingOptions":
        """These options with the batch size limited to `max_batch_size` (what a TensorRT plan accepts)."""
        if max_batch_size >= self.max_batch_size:
            return self
        preferred = tuple(b for b in self.preferred_batch_sizes if b <= max_batch_size)
        return BatchingOptions(max_batch_size, preferred, self.max_queue_delay_us, self.max_sequences,
                               self.sequence_idle_us)


@dataclass(frozen=True)
class InstanceOptions:
    """How many copies of the model Triton runs, on which kind of device, and ONNX Runtime's threads in each
    (the ONNX model only; None: 1 on CPU, ONNX Runtime's default on GPU; 0: ONNX Runtime's default)."""

    count: int = 1
    kind: str = "cpu"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_INSTANCES:
            raise TritonError(f"instances {self.count}: must be between 1 and {MAX_INSTANCES}")
        if self.kind not in KINDS:
            raise TritonError(f"kind {self.kind!r}: choose from {', '.join(KINDS)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_THREADS:
                raise TritonError(f"{name.replace('_', '-')} {value}: must be 0 (ONNX Runtime's default) to "
                                  f"{MAX_THREADS}")

    def onnxruntime_parameters(self) -> tuple[tuple[str, str], ...]:
        """The onnxruntime backend's `parameters` for these threads (none where ONNX Runtime's default is meant)."""
        default = CPU_THREADS_DEFAULT if self.kind == "cpu" else 0
        out = []
        for key, value in (("intra_op_thread_count", self.intra_op_threads),
                           ("inter_op_thread_count", self.inter_op_threads)):
            value = default if value is None else value
            if value:
                out.append((key, str(value)))
        return tuple(out)


@dataclass(frozen=True)
class TensorConfig:
    """One model input or output; `dims` exclude the batch axis."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None  # the model's own dims when they differ from `dims`


@dataclass(frozen=True)
class StateConfig:
    """One implicit state tensor and how a sequence's first request initialises it."""

    input_name: str
    output_name: str
    data_type: str
    dims: tuple[int, ...]
    initial_name: str  # `initial_state.name` (required by Triton)
    data_file: str | None = None  # under initial_state/; None means zero_data


@dataclass(frozen=True)
class TritonModelConfig:
    name: str
    platform: str  # "onnxruntime_onnx" or "tensorrt_plan"
    default_model_filename: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    states: tuple[StateConfig, ...]
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    control_data_type: str | None = "TYPE_INT32"  # START/READY inputs; None: no control inputs
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    parameters: tuple[tuple[str, str], ...] = ()  # backend parameters, e.g. ONNX Runtime's thread counts


def state_data_file(entry: StateEntry) -> str | None:
    """The initial_state/ file of `entry`, or None when Triton's zero_data is its initial value."""
    if entry.init_file is None and float(entry.init) == 0.0:
        return None
    return f"{entry.name}.bin"


def model_config(manifest: Manifest, name: str, platform: str = "onnxruntime_onnx",
                 batching: BatchingOptions | None = None, controls: bool = True,
                 instances: InstanceOptions | None = None) -> TritonModelConfig:
    """The Triton configuration of a package's step graph (or a plan built from it, which always runs on
    the GPU and takes no ONNX Runtime parameters)."""
    instances = instances or InstanceOptions()
    is_onnx = platform == "onnxruntime_onnx"
    for entry in manifest.state:
        if entry.dtype not in TRITON_DTYPES:
            raise TritonError(f"{MANIFEST_NAME}: state {entry.name!r} has dtype {entry.dtype}, which has no Triton type")
    _check_state_pairing(manifest)
    inputs = (TensorConfig(manifest.token_input, "TYPE_INT64", (1,), reshape=()),)
    outputs = (TensorConfig(manifest.logits_output, "TYPE_FP32", (manifest.model.vocab_size,)),)
    states = tuple(StateConfig(e.input, e.output, TRITON_DTYPES[e.dtype], tuple(int(d) for d in e.shape[1:]),
                               initial_name=e.name, data_file=state_data_file(e)) for e in manifest.state)
    return TritonModelConfig(name=name, platform=platform,
                             default_model_filename=ONNX_MODEL_FILE if is_onnx else PLAN_MODEL_FILE,
                             inputs=inputs, outputs=outputs, states=states, batching=batching or BatchingOptions(),
                             control_data_type="TYPE_INT32" if controls else None, instance_count=instances.count,
                             instance_kind=KINDS[instances.kind] if is_onnx else KINDS["gpu"],
                             parameters=instances.onnxruntime_parameters() if is_onnx else ())


def _check_state_pairing(manifest: Manifest) -> None:
    """Triton pairs a state's output with its input by their positions in name order (triton-inference-server
    issue 8586), so the outputs sorted by name must belong to the inputs sorted by name."""
    by_input = sorted(manifest.state, key=lambda e: e.input)
    by_output = sorted(manifest.state, key=lambda e: e.output)
    for a, b in zip(by_input, by_output):
        if a.name != b.name:
            raise TritonError(f"{MANIFEST_NAME}: state names {a.input!r}/{b.output!r} sort differently as inputs and "
                              "outputs; Triton would swap their states")


# -- rendering ----------------------------------------------------------------------------------------------


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _tensor(t: TensorConfig) -> str:
    lines = ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {_dims(t.dims)}"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_dims(t.reshape)} }}")
    return "\n".join(lines + ["  }"])


def _state(s: StateConfig) -> str:
    init = f'data_file: "{s.data_file}"' if s.data_file else "zero_data: true"
    return "\n".join([
        "    {", f'      input_name: "{s.input_name}"', f'      output_name: "{s.output_name}"',
        f"      data_type: {s.data_type}", f"      dims: {_dims(s.dims)}",
        "      initial_state: {", f"        data_type: {s.data_type}", f"        dims: {_dims(s.dims)}",
        f"        {init}", f'        name: "{s.initial_name}"', "      }", "    }"])


def _control(name: str, kind: str, data_type: str) -> str:
    values = {"TYPE_INT32": "int32_false_true: [ 0, 1 ]", "TYPE_FP32": "fp32_false_true: [ 0, 1 ]",
              "TYPE_BOOL": "bool_false_true: [ false, true ]"}[data_type]
    return "\n".join(["    {", f'      name: "{name}"', f"      control [ {{ kind: {kind} {values} }} ]", "    }"])


def render_config(config: TritonModelConfig) -> str:
    """config.pbtxt text (protobuf text format of inference.ModelConfig)."""
    b = config.batching
    preferred = ", ".join(str(x) for x in b.preferred_batch_sizes)
    out = [
        "# Written by rwkv-deploy from the package's manifest.json: one RWKV step per request, the recurrent",
        "# state kept by Triton (implicit state). Send one token per request, batch 1: shape [1, 1], int64.",
        f'name: "{config.name}"',
        f'platform: "{config.platform}"',
        f'default_model_filename: "{config.default_model_filename}"',
        f"max_batch_size: {b.max_batch_size}",
        "input [", ",\n".join(_tensor(t) for t in config.inputs), "]",
        "output [", ",\n".join(_tensor(t) for t in config.outputs), "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {b.sequence_idle_us}",
        "  oldest {",
        f"    max_candidate_sequences: {b.max_sequences}",
    ]
    if preferred:
        out.append(f"    preferred_batch_size: [ {preferred} ]")
    out += [f"    max_queue_delay_microseconds: {b.max_queue_delay_us}", "  }"]
    if config.control_data_type:
        out += ["  control_input [",
                _control(START_INPUT, "CONTROL_SEQUENCE_START", config.control_data_type) + ",",
                _control(READY_INPUT, "CONTROL_SEQUENCE_READY", config.control_data_type),
                "  ]"]
    out += ["  state [", ",\n".join(_state(s) for s in config.states), "  ]", "}",
            f"instance_group [ {{ count: {config.instance_count} kind: {config.instance_kind} }} ]"]
    out += [f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in config.parameters]
    return "\n".join(out) + "\n"


# -- the graph with control inputs --------------------------------------------------------------------------


def graph_with_controls(graph_path: str | Path, token_input: str, vocab_size: int, data_type: str = "TYPE_INT32"):
    """The package's step graph (weights left where they are: external data keeps its file name) with the
    START and READY inputs the onnxruntime backend requires, shape [batch, 1], which nothing reads, and a
    guard that refuses negative tokens.

    The guard: ONNX's Gather takes a negative index as counted from the end, so token -1 would be answered
    with the last token's embedding instead of an error. Every negative token is moved below -vocab_size
    (token - vocab_size), where the embedding's Gather refuses it as it refuses a token >= vocab_size.
    Valid tokens pass through unchanged (Where picks them as they are)."""
    import onnx

    onnx_type = {"TYPE_INT32": onnx.TensorProto.INT32, "TYPE_FP32": onnx.TensorProto.FLOAT,
                 "TYPE_BOOL": onnx.TensorProto.BOOL}[data_type]
    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, ...
        raise TritonError(f"{graph_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    taken = {v.name for v in [*graph.input, *graph.output, *graph.initializer]} | \
        {name for node in graph.node for name in [*node.input, *node.output]}
    for name in (START_INPUT, READY_INPUT, *_GUARD_NAMES):
        if name in taken:
            raise TritonError(f"{graph_path}: already has a tensor named {name!r}, which the Triton model adds")
    if token_input not in {i.name for i in graph.input}:
        raise TritonError(f"{graph_path}: has no input {token_input!r}")
    first = graph.input[0].type.tensor_type.shape.dim[0]
    batch = first.dim_param or "batch"
    for name in (START_INPUT, READY_INPUT):
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx_type, [batch, 1]))

    checked = GUARD_TOKEN
    for node in graph.node:
        node.input[:] = [checked if name == token_input else name for name in node.input]
    zero, vocab, negative, shifted = _GUARD_NAMES[1:]
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0, np.int64), zero),
                              onnx.numpy_helper.from_array(np.array(vocab_size, np.int64), vocab)])
    guard = [onnx.helper.make_node("Less", [token_input, zero], [negative], name=f"{GUARD_PREFIX}less"),
             onnx.helper.make_node("Sub", [token_input, vocab], [shifted], name=f"{GUARD_PREFIX}sub"),
             onnx.helper.make_node("Where", [negative, shifted, token_input], [checked], name=f"{GUARD_PREFIX}where")]
    nodes = guard + list(graph.node)  # topological order: the guard first
    del graph.node[:]
    graph.node.extend(nodes)
    return model


# -- writing the repository ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonRepository:
    root: Path
    models: tuple[str, ...]  # model names, the ONNX model first
    files: tuple[str, ...]  # every file written, relative to root


def default_model_name(package_dir: str | Path) -> str:
    """The package directory's name made into a Triton model name (letters, digits, `_ . -`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(package_dir).resolve().name).lstrip("_.-")
    return name or "rwkv"


def write_repository(package_dir: str | Path, out: str | Path, name: str | None = None,
                     batching: BatchingOptions | None = None, force: bool = False,
                     instances: InstanceOptions | None = None) -> TritonRepository:
    """Write the Triton model repository of the verified package `package_dir` to `out`, atomically: a
    staging sibling renamed into place (`rwkv_deploy.staging`). `out` must be new or empty unless `force`."""
    from rwkv_deploy.package.verify import verify_package

    package_dir, out = Path(package_dir), Path(out)
    name = name or default_model_name(package_dir)
    batching = batching or BatchingOptions()
    if not _NAME.fullmatch(name):
        raise TritonError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only")
    _check_paths(package_dir, out, force)
    problems = verify_package(package_dir)
    if problems:
        more = f" (and {len(problems) - 1} more; run `rwkv-deploy verify {package_dir}`)" if len(problems) > 1 else ""
        raise TritonError(f"{package_dir}: not written as a Triton repository, it fails verification: "
                          f"{problems[0]}{more}")
    manifest = read_manifest(package_dir)
    engine = _engine(package_dir, manifest)

    with staged_directory(out, replace=force) as tmp:  # lock, owner marker, signals, SIGKILL leftovers
        _write_onnx_model(package_dir, manifest, tmp / name,
                          model_config(manifest, name, batching=batching, instances=instances))
        models = [name]
        if engine is not None:
            plan, max_batch = engine
            trt_name = name + TRT_SUFFIX
            config = model_config(manifest, trt_name, "tensorrt_plan", batching.capped(max_batch), controls=False,
                                  instances=instances)
            _write_plan_model(package_dir, manifest, tmp / trt_name, config, plan)
            models.append(trt_name)
        files = tuple(p.relative_to(tmp).as_posix() for p in staged_files(tmp))
    return TritonRepository(out, tuple(models), files)


def _check_paths(package_dir: Path, out: Path, force: bool) -> None:
    if not package_dir.is_dir():
        raise TritonError(f"{package_dir}: no such package directory")
    if out.is_symlink():
        raise TritonError(f"{out}: is a symbolic link; refusing to write through it")
    if out.exists() and not out.is_dir():
        raise TritonError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise TritonError(f"{out}: exists and is not empty (use --force to replace it)")
    if out.resolve().is_relative_to(package_dir.resolve()):
        raise TritonError(f"{out}: inside the package directory it is made from")
    if package_dir.resolve().is_relative_to(out.resolve()):
        raise TritonError(f"{out}: contains the package directory {package_dir}; replacing it would delete the package")


def _engine(package_dir: Path, manifest: Manifest) -> tuple[Path, int] | None:
    """(plan path, largest batch the plan accepts) when the package has a TensorRT engine, else None."""
    from rwkv_deploy.package.engines import read_engine_record

    entry = manifest.engines.get(STEP_GRAPH)
    if entry is None:
        return None
    plan = package_dir / entry.plan
    record = read_engine_record(plan)
    info = f"{package_dir / entry.info}"
    if record.get("graph_sha256") != manifest.files.get(manifest.graphs[STEP_GRAPH].path):
        raise TritonError(f"{info}: the engine was built from another graph; rebuild it with "
                          "`rwkv-deploy build-engine DIR`")
    try:
        ranges = [p["batch"] for p in record["build_config"]["profiles"]]
        first = ranges[0]
    except (KeyError, IndexError, TypeError):
        raise TritonError(f"{info}: has no optimization profiles (build_config.profiles)") from None
    if first["min"] != 1:
        raise TritonError(f"{info}: the engine's first optimization profile starts at batch {first['min']}; Triton "
                          "sends batches from 1 (rebuild with --batch 1:OPT:MAX)")
    return plan, int(first["max"])  # Triton's TensorRT backend uses the first profile unless told otherwise


def _write_initial_states(package_dir: Path, manifest: Manifest, model_dir: Path) -> None:
    from rwkv_deploy.package.state_files import load_initial_arrays

    tuned = load_initial_arrays(manifest, package_dir)
    for entry in manifest.state:
        data_file = state_data_file(entry)
        if data_file is None:
            continue
        shape = tuple(int(d) for d in entry.shape[1:])
        dtype = np.dtype(entry.dtype).newbyteorder("<")
        value = tuned[entry.name] if entry.init_file else np.full(shape, entry.init)
        array = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=dtype), shape))
        path = model_dir / INITIAL_STATE_DIR / data_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(array.tobytes(order="C"))


def _write_onnx_model(package_dir: Path, manifest: Manifest, model_dir: Path, config: TritonModelConfig) -> None:
    import onnx

    graph = manifest.graphs["step"]
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    model = graph_with_controls(package_dir / graph.path, manifest.token_input, manifest.model.vocab_size,
                                config.control_data_type or "TYPE_INT32")
    onnx.save(model, str(version_dir / ONNX_MODEL_FILE))
    if graph.external_data:  # the copy refers to the weights by the same file name, resolved next to it
        target = version_dir / graph.external_data
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile((package_dir / graph.path).parent / graph.external_data, target)
    _write_initial_states(package_dir, manifest, model_dir)
    (model_dir / "config.pbtxt").write_text(render_config(config))


def _write_plan_model(package_dir: Path, manifest: Manifest, model_dir: Path, config: TritonModelConfig,
                      plan: Path) -> None:
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    shutil.copyfile(plan, version_dir / PLAN_MODEL_FILE)
    _write_initial_states(package_dir, manifest, model_dir)
    (model_dir / "config.pbtxt").write_text(render_config(config))
