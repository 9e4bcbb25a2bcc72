"""deploy/c/genai_generate.c and its C++ twin, built here with the system compiler against the vendored GenAI
headers and the wheel's libonnxruntime-genai.so, run on a GenAI folder: greedy tokens equal our runtime's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.small_packages import shared
from tests.targets.genai.genai_runs import ours

pytestmark = pytest.mark.slow  # exports, builds a GenAI folder and compiles a C program

genai = pytest.importorskip("onnxruntime_genai")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[3]
HEADERS = REPO.parent / "shared" / "vendor" / "onnxruntime-genai-c-api"
SOURCES = {"c": ("gcc", REPO / "deploy" / "c" / "genai_generate.c", []),
           "c++": ("g++", REPO / "deploy" / "c" / "genai_generate.cpp", ["-std=c++17"])}
PROMPT = [72, 101, 108, 108, 111, 32, 119]
N = 10


def _libraries(tmp: Path) -> tuple[Path, Path]:
    """(folder of libonnxruntime-genai.so, folder holding libonnxruntime.so): GenAI dlopens ONNX Runtime by
    that name, and the onnxruntime wheel ships it only as libonnxruntime.so.1.<minor>.<patch>."""
    genai_lib = Path(genai.__file__).parent
    ort_lib = next((Path(ort.__file__).parent / "capi").glob("libonnxruntime.so.1*"))
    ort_dir = tmp / "ort"
    ort_dir.mkdir()
    (ort_dir / "libonnxruntime.so").symlink_to(ort_lib)
    return genai_lib, ort_dir


@pytest.mark.parametrize("language", ["c", "c++"])
def test_the_program_generates_our_runtimes_greedy_tokens(shared_package, tmp_path, language):
    from rwkv_deploy.targets.genai.folder import write_genai_folder

    compiler, source, flags = SOURCES[language]
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    if not (HEADERS / "ort_genai_c.h").is_file():
        pytest.skip(f"no GenAI headers at {HEADERS}")
    genai_lib, ort_dir = _libraries(tmp_path)
    program = tmp_path / "genai_generate"
    subprocess.run([compiler, *flags, "-O1", "-Wall", "-Werror", "-o", str(program), str(source), f"-I{HEADERS}",
                    f"-L{genai_lib}", "-l:libonnxruntime-genai.so", f"-Wl,-rpath,{genai_lib}"], check=True)
    package = shared(shared_package, "6")
    folder = write_genai_folder(package, tmp_path / "genai").path

    run = subprocess.run([str(program), str(folder), str(N), *map(str, PROMPT)], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(ort_dir)}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [int(line) for line in run.stdout.split()] == ours(package, PROMPT, N)[0]


def test_the_program_says_why_a_folder_does_not_load(tmp_path):
    if shutil.which("gcc") is None or not (HEADERS / "ort_genai_c.h").is_file():
        pytest.skip("no gcc or no GenAI headers")
    genai_lib, ort_dir = _libraries(tmp_path)
    program = tmp_path / "genai_generate"
    subprocess.run(["gcc", "-o", str(program), str(SOURCES["c"][1]), f"-I{HEADERS}", f"-L{genai_lib}",
                    "-l:libonnxruntime-genai.so", f"-Wl,-rpath,{genai_lib}"], check=True)
    run = subprocess.run([str(program), str(tmp_path / "missing"), "3", "1"], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(ort_dir)}, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("genai_generate: loading the folder: ")
