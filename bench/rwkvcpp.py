"""rwkv.cpp (ggml) as a bench engine: its library built once from its sources, the bench checkpoint put through
its own converter and quantizer, and its C API driven through ctypes.

Nothing of rwkv.cpp is copied here. The sources come from `../shared/vendor/rwkv.cpp/` (or `--rwkvcpp-source`);
the library is built with cmake into the bench cache (or given as `--rwkvcpp-lib`); the model files are made by
running its `python/convert_pytorch_to_ggml.py` and its quantizer (through its own `rwkv_cpp` wrapper) in
subprocesses, the way its README tells users to: convert to FP16 (or FP32), quantize the FP16 file.

One thing is changed on the way in, and it changes no number: rwkv.cpp's loader (4358e70) registers
`att.v0/v1/v2` only for layers other than 0, and reading a file that has them in layer 0 fails (the tensor
was never allocated). Released RWKV-7 files carry them there (BlinkDL's training module creates them in
every layer; no layer-0 code reads them), and so do our random checkpoints. The converter is therefore fed
the checkpoint without those three unused tensors (docs/bench.md).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rwkv_deploy.errors import RefusedError

from .peer_tools import cmake_build, run_tool

ENGINE = "rwkv.cpp"
PRECISIONS = ("FP32", "FP16", "Q8_0", "Q5_1", "Q4_0")
QUANTIZED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
UNUSED_LAYER0 = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
SEQUENCE_CHUNK = 64  # rwkv_eval_sequence_in_chunks' chunk: its docs suggest 16, "or so 64" for speed; 64 measured faster
LIBRARY = "librwkv.so"
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DRWKV_BUILD_SHARED_LIBRARY=ON", "-DRWKV_STANDALONE=ON",
                 "-DGGML_NATIVE=OFF", "-DGGML_CCACHE=OFF", "-DBUILD_SHARED_LIBS=OFF",
                 "-DCMAKE_POSITION_INDEPENDENT_CODE=ON")


class RwkvCppError(RefusedError):
    """rwkv.cpp cannot be built, loaded or fed the checkpoint."""


def vendored_folder() -> Path:
    """Where a checkout's vendored rwkv.cpp sources live: shared/vendor/rwkv.cpp beside the checkout."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "vendor" / "rwkv.cpp"


def default_source() -> Path | None:
    """The newest vendored source archive (`rwkv.cpp-*-src.tar.gz` in vendored_folder()), if present."""
    folder = vendored_folder()
    found = sorted(folder.glob("rwkv.cpp-*-src.tar.gz")) if folder.is_dir() else []
    return found[-1] if found else None


@dataclass(frozen=True)
class RwkvCppTools:
    library: Path  # librwkv.so
    python_dir: Path  # rwkv.cpp's python/ folder: the converter and the rwkv_cpp wrapper


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack the source archive once; returns the source root (the folder holding CMakeLists.txt)."""
    stamp = dest / ".unpacked"
    if not stamp.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest.parent))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stamp.touch()
    roots = [p.parent for p in dest.glob("*/CMakeLists.txt")] + ([dest] if (dest / "CMakeLists.txt").exists() else [])
    if not roots:
        raise RwkvCppError(f"{archive}: no CMakeLists.txt in the archive (not rwkv.cpp's sources?)")
    return roots[0]


def prepare_tools(work_dir: Path, source: Path | None, library: Path | None, jobs: int,
                  progress: Callable[[str], None]) -> RwkvCppTools:
    """rwkv.cpp's library and python folder: `library` if given, else built once into `work_dir` from `source`
    (a source archive or an unpacked source tree)."""
    if source is None:
        source = default_source()
    if source is None:
        raise RwkvCppError(f"rwkv.cpp: no sources (give --rwkvcpp-source ARCHIVE_OR_DIR; none vendored in "
                           f"{vendored_folder()})")
    if not source.exists():
        raise RwkvCppError(f"{source}: no such rwkv.cpp source archive or folder")
    if source.is_dir():
        root = source
    else:
        root = _unpack(source, work_dir / "rwkvcpp" / source.name.removesuffix(".tar.gz"))
    python_dir = root / "python"
    if not (python_dir / "convert_pytorch_to_ggml.py").exists():
        raise RwkvCppError(f"{root}: no python/convert_pytorch_to_ggml.py (not rwkv.cpp's sources?)")
    if library is not None:
        if not library.is_file():
            raise RwkvCppError(f"{library}: --rwkvcpp-lib is not a file")
        return RwkvCppTools(library.resolve(), python_dir)
    key = source.name.removesuffix(".tar.gz") if source.is_file() else source.resolve().name
    build = (work_dir / "rwkvcpp" / f"build-{key}").resolve()
    built = build / LIBRARY
    if not built.exists():
        progress(f"building rwkv.cpp's library (cmake, {jobs} jobs; once, into {build})")
        build_library(root, build, jobs)
    return RwkvCppTools(built, python_dir)


def build_library(root: Path, build: Path, jobs: int) -> Path:
    """cmake configure + build of the `rwkv` target only (ggml linked in statically), Ninja when present."""
    cmake_build(root, build, "rwkv", CMAKE_OPTIONS, jobs, "rwkv.cpp", RwkvCppError, "--rwkvcpp-lib")
    if not (build / LIBRARY).exists():
        raise RwkvCppError(f"rwkv.cpp build: {build / LIBRARY} was not produced")
    return build / LIBRARY


# -- model files: rwkv.cpp's converter and quantizer, in subprocesses -------------------------------------------

_CONVERT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from convert_pytorch_to_ggml import write_state_dict
state = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
for key in sys.argv[5:]:
    state.pop(key, None)
write_state_dict(state, sys.argv[3], sys.argv[4])
"""

_QUANTIZE = """
import sys
sys.path.insert(0, sys.argv[1])
from rwkv_cpp.rwkv_cpp_shared_library import RWKVSharedLibrary
RWKVSharedLibrary(sys.argv[2]).rwkv_quantize_model_file(sys.argv[3], sys.argv[4], sys.argv[5])
"""


def model_file(tools: RwkvCppTools, checkpoint: Path, precision: str, out_dir: Path,
               progress: Callable[[str], None]) -> Path:
    """rwkv.cpp's file of `checkpoint` at `precision` (cached): FP32/FP16 from its converter, the quantized
    ones from its quantizer applied to the FP16 file (its README's route)."""
    if precision not in PRECISIONS + QUANTIZED:
        raise RwkvCppError(f"rwkv.cpp: unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{checkpoint.stem}-{precision}.bin"
    if target.exists():
        return target
    staging = target.with_name(f".making-{target.name}")
    try:
        if precision in ("FP32", "FP16"):
            progress(f"converting the checkpoint with rwkv.cpp's converter ({precision})")
            _run([sys.executable, "-c", _CONVERT, str(tools.python_dir), str(checkpoint), str(staging), precision,
                  *UNUSED_LAYER0], "converter")
        else:
            source = model_file(tools, checkpoint, "FP16", out_dir, progress)
            progress(f"quantizing with rwkv.cpp's quantizer ({precision}, from its FP16 file)")
            _run([sys.executable, "-c", _QUANTIZE, str(tools.python_dir), str(tools.library), str(source),
                  str(staging), precision], "quantizer")
        if not staging.exists() or staging.stat().st_size == 0:
            raise RwkvCppError(f"rwkv.cpp {precision}: its tool wrote no file")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def _run(command: list[str], what: str) -> None:
    run_tool(command, f"rwkv.cpp's {what} failed", RwkvCppError)


# -- the C API through ctypes -------------------------------------------------------------------------------------


class RwkvCppModel:
    """One rwkv.cpp context (rwkv.h): `eval` one token, `eval_sequence` a whole prompt in chunks."""

    def __init__(self, library: Path, model: Path, threads: int) -> None:
        lib = ctypes.CDLL(str(library))
        f32p, u32p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint32)
        lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
        lib.rwkv_init_from_file.restype = ctypes.c_void_p
        lib.rwkv_eval.argtypes = [ctypes.c_void_p, ctypes.c_uint32, f32p, f32p, f32p]
        lib.rwkv_eval.restype = ctypes.c_bool
        lib.rwkv_eval_sequence_in_chunks.argtypes = [ctypes.c_void_p, u32p, ctypes.c_size_t, ctypes.c_size_t,
                                                     f32p, f32p, f32p]
        lib.rwkv_eval_sequence_in_chunks.restype = ctypes.c_bool
        for name in ("rwkv_get_state_len", "rwkv_get_logits_len"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_size_t
        lib.rwkv_init_state.argtypes = [ctypes.c_void_p, f32p]
        lib.rwkv_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.ctx = lib.rwkv_init_from_file(str(model).encode(), threads, 0)
        if not self.ctx:
            raise RwkvCppError(f"{model}: rwkv.cpp cannot load the file")
        self.state_len = lib.rwkv_get_state_len(self.ctx)
        self.logits_len = lib.rwkv_get_logits_len(self.ctx)

    @staticmethod
    def _ptr(array: np.ndarray | None) -> Any:
        return None if array is None else array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def fresh_state(self) -> np.ndarray:
        state = np.empty(self.state_len, np.float32)
        self.lib.rwkv_init_state(self.ctx, self._ptr(state))
        return state

    def eval(self, token: int, state_in: np.ndarray, state_out: np.ndarray, logits: np.ndarray | None) -> None:
        if not self.lib.rwkv_eval(self.ctx, token, self._ptr(state_in), self._ptr(state_out), self._ptr(logits)):
            raise RwkvCppError("rwkv.cpp: rwkv_eval failed")

    def eval_sequence(self, tokens: np.ndarray, state_in: np.ndarray, state_out: np.ndarray,
                      logits: np.ndarray, chunk: int = SEQUENCE_CHUNK) -> None:
        ids = np.ascontiguousarray(tokens, dtype=np.uint32)
        ok = self.lib.rwkv_eval_sequence_in_chunks(self.ctx, ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                                   len(ids), chunk, self._ptr(state_in), self._ptr(state_out),
                                                   self._ptr(logits))
        if not ok:
            raise RwkvCppError("rwkv.cpp: rwkv_eval_sequence_in_chunks failed")

    def close(self) -> None:
        if self.ctx:
            self.lib.rwkv_free(self.ctx)
            self.ctx = None
