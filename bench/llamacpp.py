"""llama.cpp as a bench engine: its library built once from the llama.cpp that PyPI's `llama-cpp-python` sdist
vendors, the bench checkpoint put through its own converter (via the Hugging Face folder `rwkv-deploy convert
--to hf` writes) and quantizer, and its C API driven through the sdist's own ctypes binding.

Nothing of llama.cpp is copied here. The sdist is the one `make setup` fetches into .cache/ (or
`--llamacpp-sdist`); the library is built with cmake into the bench cache (or given as `--llamacpp-lib`, a
folder holding libllama.so); the binding is the sdist's `llama_cpp/llama_cpp.py`, which matches its llama.cpp's
structs, imported without the package's high-level modules.

The build is `-march=native` spelled out as ggml's instruction-set options, except AMX: on a CPU with AMX,
ggml's AMX matrix product crashed (SIGSEGV) on every quantized RWKV file we gave it (llama-server and the
binding alike), and its weight repacking, which the fast AVX2/AVX-512 quantized paths rely on, stays on.
Only RWKV-6 and RWKV-7 exist in llama.cpp, and its converter reads the World vocabulary (vocab 65536).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tarfile
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rwkv_deploy.errors import RefusedError

from .peer_tools import cmake_build, run_tool

ENGINE = "llama.cpp"
SDIST_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
PRECISIONS = ("F32", "F16", "Q8_0", "Q4_0")
CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0"}  # what its converter writes itself
QUANTIZER_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K")  # from F32
VERSIONS = ("6", "7")
LIBRARY = "libllama.so"
_SDIST_ROOT = f"llama_cpp_python-{SDIST_VERSION}"  # the sdist's top folder: llama_cpp/ and vendor/llama.cpp/
# /proc/cpuinfo flag -> ggml's cmake option (GGML_NATIVE=OFF); AMX deliberately absent (module docstring)
ISA_OPTIONS = {"sse4_2": "SSE42", "avx": "AVX", "avx2": "AVX2", "bmi2": "BMI2", "fma": "FMA", "f16c": "F16C",
               "avx_vnni": "AVX_VNNI", "avx512f": "AVX512", "avx512_vbmi": "AVX512_VBMI",
               "avx512_vnni": "AVX512_VNNI", "avx512_bf16": "AVX512_BF16"}
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF",
                 "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                 "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF")


class LlamaCppError(RefusedError):
    """llama.cpp cannot be built, loaded or fed the checkpoint."""


def default_sdist() -> Path | None:
    """The sdist `make setup` fetches into the repository's .cache/, if present."""
    found = Path(__file__).resolve().parents[1] / ".cache" / SDIST_NAME
    return found if found.is_file() else None


@dataclass(frozen=True)
class LlamaCppTools:
    library_dir: Path  # the folder holding libllama.so (and the ggml libraries it loads)
    binding_dir: Path  # the folder holding the sdist's llama_cpp/ binding
    converter_dir: Path  # the folder holding convert_hf_to_gguf.py


def _unpack(sdist: Path, dest: Path, prefixes: tuple[str, ...]) -> Path:
    """Members of `sdist` under `prefixes` (paths relative to the sdist root), once, atomically."""
    if (dest / ".unpacked").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest.parent))
    root = f"{_SDIST_ROOT}/"
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(tuple(root + p for p in prefixes))
                       and (m.isfile() or m.isdir())]
            if not members:
                raise LlamaCppError(f"{sdist}: not the llama-cpp-python {SDIST_VERSION} sdist")
            tar.extractall(staging, members=members, filter="data")
        (staging / ".unpacked").touch()
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def isa_options(cpuinfo: str | None = None) -> list[str]:
    """ggml's instruction-set options for this CPU (what -march=native would pick), AMX left out."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []  # not Linux: ggml's portable defaults
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    return [f"-DGGML_{option}={'ON' if flag in flags else 'OFF'}" for flag, option in ISA_OPTIONS.items()]


def prepare_tools(work_dir: Path, sdist: Path | None, library_dir: Path | None, jobs: int,
                  progress: Callable[[str], None]) -> LlamaCppTools:
    """llama.cpp's library, binding and converter: the library from `library_dir` if given, else built once
    into `work_dir` from the sdist's llama.cpp."""
    sdist = sdist or default_sdist()
    if sdist is None:
        raise LlamaCppError(f"llama.cpp: no sources (give --llamacpp-sdist {SDIST_NAME}; `make setup` fetches it "
                            "into .cache/)")
    if not sdist.is_file():
        raise LlamaCppError(f"{sdist}: no such llama-cpp-python sdist")
    base = (work_dir / "llamacpp" / sdist.name.removesuffix(".tar.gz")).resolve()
    unpacked = _unpack(sdist, base / "src", ("vendor/llama.cpp/", "llama_cpp/"))
    source = unpacked / _SDIST_ROOT / "vendor" / "llama.cpp"
    tools = LlamaCppTools(library_dir or base / "build" / "bin", unpacked / _SDIST_ROOT, source)
    if library_dir is not None:
        if not (library_dir / LIBRARY).is_file():
            raise LlamaCppError(f"{library_dir}: --llamacpp-lib holds no {LIBRARY}")
        return tools
    if not (tools.library_dir / LIBRARY).is_file():
        progress(f"building llama.cpp's library (cmake, {jobs} jobs; once, into {base / 'build'})")
        build_library(source, base / "build", jobs)
    return tools


def build_library(source: Path, build: Path, jobs: int) -> Path:
    """cmake configure + build of the `llama` target (shared, with its ggml libraries)."""
    cmake_build(source, build, "llama", [*CMAKE_OPTIONS, *isa_options()], jobs, "llama.cpp", LlamaCppError,
                "--llamacpp-lib")
    if not (build / "bin" / LIBRARY).is_file():
        raise LlamaCppError(f"llama.cpp build: {build / 'bin' / LIBRARY} was not produced")
    return build / "bin" / LIBRARY


# -- model files: its converter (from our Hugging Face folder) and its quantizer --------------------------------

_CONVERT_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

_QUANTIZE = """
import sys, ctypes
sys.path.insert(0, sys.argv[1])
from rwkv_deploy.bench.llamacpp import load_binding
lc = load_binding(sys.argv[2], sys.argv[3])
params = lc.llama_model_quantize_default_params()
params.ftype = getattr(lc, "LLAMA_FTYPE_MOSTLY_" + sys.argv[6])
sys.exit(lc.llama_model_quantize(sys.argv[4].encode(), sys.argv[5].encode(), ctypes.byref(params)))
"""


def model_file(tools: LlamaCppTools, checkpoint: Path, precision: str, out_dir: Path,
               progress: Callable[[str], None]) -> Path:
    """llama.cpp's GGUF of `checkpoint` at `precision` (cached): F32/F16/Q8_0 from its converter run on the
    Hugging Face folder of the checkpoint, the others from its quantizer applied to the F32 file."""
    if precision not in tuple(CONVERTER_TYPES) + QUANTIZER_TYPES:
        raise LlamaCppError(f"llama.cpp: unknown precision {precision!r} "
                            f"(one of {', '.join(tuple(CONVERTER_TYPES) + QUANTIZER_TYPES)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{checkpoint.stem}-{precision}.gguf"
    if target.exists():
        return target
    staging = target.with_name(f".making-{target.name}")
    try:
        if precision in CONVERTER_TYPES:
            folder = hf_folder(checkpoint, out_dir, progress)
            progress(f"converting with llama.cpp's convert_hf_to_gguf.py ({precision})")
            _run([sys.executable, str(tools.converter_dir / "convert_hf_to_gguf.py"), str(folder), "--outfile",
                  str(staging), "--outtype", CONVERTER_TYPES[precision]], "converter",
                 {**os.environ, **_CONVERT_ENV, "PYTHONPATH": ""})
        else:
            source = model_file(tools, checkpoint, "F32", out_dir, progress)
            progress(f"quantizing with llama.cpp's quantizer ({precision}, from its F32 file)")
            _run([sys.executable, "-c", _QUANTIZE, str(Path(__file__).resolve().parents[2]), str(tools.binding_dir),
                  str(tools.library_dir), str(source), str(staging), precision], "quantizer", None)
        if not staging.exists() or staging.stat().st_size == 0:
            raise LlamaCppError(f"llama.cpp {precision}: its tool wrote no file")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def hf_folder(checkpoint: Path, out_dir: Path, progress: Callable[[str], None]) -> Path:
    """The checkpoint as the Hugging Face folder llama.cpp's converter reads (`rwkv-deploy convert --to hf`)."""
    from rwkv_deploy.models.convert import convert_checkpoint

    folder = out_dir / f"{checkpoint.stem}-hf"
    if not (folder / "config.json").exists():
        progress("writing the checkpoint's Hugging Face folder for llama.cpp's converter")
        convert_checkpoint(checkpoint, "hf", folder, force=True)
    return folder


def _run(command: list[str], what: str, env: dict[str, str] | None) -> None:
    run_tool(command, f"llama.cpp's {what} failed", LlamaCppError, env)


# -- the C API through the sdist's ctypes binding ------------------------------------------------------------------


def load_binding(binding_dir: str | Path, library_dir: str | Path) -> types.ModuleType:
    """The sdist's low-level binding (`llama_cpp.llama_cpp`) over the library in `library_dir`, imported without
    the package's `__init__` (which pulls in its high-level API and that API's dependencies)."""
    os.environ["LLAMA_CPP_LIB_PATH"] = str(library_dir)
    if "llama_cpp" not in sys.modules:
        package = types.ModuleType("llama_cpp")
        package.__path__ = [str(Path(binding_dir) / "llama_cpp")]
        sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


class LlamaCppModel:
    """One llama.cpp model (llama.h), loaded once; `context` makes a context for some number of parallel
    sequences on it (the weights are shared, so a process's peak memory is one copy of them)."""

    def __init__(self, binding_dir: str | Path, library_dir: str | Path, model: Path, threads: int) -> None:
        lc = self.lc = load_binding(binding_dir, library_dir)
        self._quiet = lc.llama_log_callback(lambda level, text, data: None)  # an attribute: ctypes must keep it
        lc.llama_log_set(self._quiet, None)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(model).encode(), lc.llama_model_default_params())
        if not self.model:
            raise LlamaCppError(f"{model}: llama.cpp cannot load the file")
        self.threads = threads
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self._contexts: dict[tuple[int, int], LlamaCppContext] = {}

    def context(self, sequences: int, batch_tokens: int) -> "LlamaCppContext":
        key = (sequences, max(batch_tokens, sequences))
        if key not in self._contexts:
            self._contexts[key] = LlamaCppContext(self, *key)
        return self._contexts[key]


class LlamaCppContext:
    """A context of `sequences` parallel sequences: `decode` one token for each, `prefill` a prompt of one,
    logits read back as float32."""

    def __init__(self, model: LlamaCppModel, sequences: int, batch_tokens: int) -> None:
        lc = self.lc = model.lc
        params = lc.llama_context_default_params()
        params.n_ctx = 1 << 16  # positions only: a recurrent model's memory does not grow with them
        params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = sequences
        params.n_threads = params.n_threads_batch = model.threads
        self.ctx = lc.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise LlamaCppError(f"llama.cpp cannot make a context for {sequences} sequences")
        self.vocab, self.sequences = model.vocab, sequences
        self.batch = lc.llama_batch_init(batch_tokens, 0, 1)
        self.positions = [0] * sequences

    def reset(self) -> None:
        """Every sequence back to the fresh state."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.positions = [0] * self.sequences

    def _decode(self, tokens: list[int], sequences: list[int], logits_at: set[int]) -> None:
        if max(self.positions) + len(tokens) >= (1 << 16) - 1:
            self.reset()  # far past any timing: restart the positions (the timing does not depend on them)
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, (token, seq) in enumerate(zip(tokens, sequences)):
            batch.token[i] = token
            batch.pos[i] = self.positions[seq]
            self.positions[seq] += 1
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if i in logits_at else 0
        code = self.lc.llama_decode(self.ctx, batch)
        if code != 0:
            raise LlamaCppError(f"llama.cpp: llama_decode returned {code}")

    def decode(self, tokens: np.ndarray) -> None:
        """One token for each sequence 0..len(tokens)-1, every sequence's logits computed."""
        n = len(tokens)
        self._decode([int(t) for t in tokens], list(range(n)), set(range(n)))

    def prefill(self, tokens: np.ndarray) -> None:
        """Sequence 0 from a fresh state through `tokens` in one batch, logits after the last one only."""
        self.reset()
        self._decode([int(t) for t in tokens], [0] * len(tokens), {len(tokens) - 1})

    def logits(self, index: int) -> np.ndarray:
        """The logits of the last decode's `index`-th token, float32 [vocab]."""
        pointer = self.lc.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,)).astype(np.float32, copy=True)


def checkpoint_versions_note(version: str) -> str | None:
    """Why llama.cpp cannot run a checkpoint of `version` (None: it can)."""
    if version.split(".")[0] not in VERSIONS:
        return f"llama.cpp has RWKV-6 and RWKV-7 only, not RWKV-{version}"
    return None

