"""llama.cpp's own GGUF tools for tests, from the `llama-cpp-python` sdist that `make setup` fetches into .cache/.

- `converter_tree`: unpack the sdist's `convert_hf_to_gguf.py`, `conversion/` and `gguf-py/` (nothing else).
- `start_conversion`: run llama.cpp's HF -> GGUF converter on a Hugging Face folder, offline, as a subprocess.
- `requantize`: rewrite a GGUF with the `gguf` library's numpy quantizer (types the converter cannot write, e.g.
  Q4_0), keeping unquantized what llama.cpp's `llama-quant.cpp` keeps (1-D tensors and RWKV's small matrices), as
  `llama-quantize --pure` does (no per-tensor type mixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SDIST_VERSION = "0.3.36"
SDIST = REPO / ".cache" / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
_VENDOR = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# llama-quant.cpp: "do not quantize RWKV's small yet 2D weights"
KEPT_UNQUANTIZED = tuple(f"{name}.weight" for name in (
    "time_mix_first", "time_mix_w0", "time_mix_w1", "time_mix_w2", "time_mix_v0", "time_mix_v1", "time_mix_v2",
    "time_mix_a0", "time_mix_a1", "time_mix_a2", "time_mix_g1", "time_mix_g2", "time_mix_decay_w1",
    "time_mix_decay_w2", "time_mix_lerp_fused"))


def sdist_missing_reason() -> str | None:
    if SDIST.is_file():
        return None
    return (f"{SDIST.relative_to(REPO)} is absent: `make setup` fetches it from PyPI (llama-cpp-python=="
            f"{SDIST_VERSION} sdist, which vendors llama.cpp's GGUF converter)")


def converter_tree(dest: Path) -> Path:
    """Unpack the converter's files from the sdist into `dest`; returns the folder holding convert_hf_to_gguf.py."""
    with tarfile.open(SDIST) as tar:
        members = []
        for member in tar.getmembers():
            rel = member.name[len(_VENDOR):] if member.name.startswith(_VENDOR) else None
            if rel and rel.startswith(_CONVERTER_PARTS) and (member.isfile() or member.isdir()):
                member.name = rel
                members.append(member)
        tar.extractall(dest, members=members, filter="data")
    return dest


def start_conversion(tree: Path, hf_folder: Path, out: Path, outtype: str) -> subprocess.Popen[bytes]:
    """llama.cpp's converter on `hf_folder` -> `out` at `outtype` (f32, f16, bf16, q8_0), offline, one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own vendored gguf-py
    args = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(hf_folder), "--outfile", str(out),
            "--outtype", outtype]
    log = open(out.with_suffix(".log"), "wb")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], out: Path) -> Path:
    if proc.wait(timeout=600) != 0:
        raise RuntimeError(f"llama.cpp's converter failed for {out.name}:\n"
                           + out.with_suffix(".log").read_text(errors="replace")[-3000:])
    return out


def quantizable(name: str, n_dims: int) -> bool:
    return n_dims >= 2 and name.endswith(".weight") and not name.endswith(KEPT_UNQUANTIZED)


def requantize(src: Path, dst: Path, qtype_name: str) -> Path:
    """Copy the GGUF `src` (all tensors F32) to `dst`, quantizing what llama.cpp quantizes to `qtype_name`."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    qtype = GGMLQuantizationType[qtype_name]
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main = field.types[0]
        sub = field.types[1] if main == GGUFValueType.ARRAY else None
        value = field.contents()
        if key == "general.file_type":
            value = int(qtype)  # LlamaFileType numbers equal the quant type numbers for the basic types
        writer.add_key_value(key, value, main, sub)
    for t in reader.tensors:
        assert t.tensor_type == GGMLQuantizationType.F32, "requantize starts from an F32 file"
        data = np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)])
        if quantizable(t.name, data.ndim):
            writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
