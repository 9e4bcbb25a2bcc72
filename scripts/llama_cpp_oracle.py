"""llama.cpp as a second oracle for GGUF files: its own logits on a GGUF against ours on the same file.

Builds llama.cpp once from the `llama-cpp-python` sdist that `make setup` fetches (.cache/), as that package's
Python binding, into its own virtual environment (.cache/llama-cpp-venv; -march=native; about 5 minutes on 2
cores, longer on a busy machine: not part of CI). Then, per GGUF file, llama.cpp evaluates a token sequence in
a subprocess of that environment (all positions' logits), we evaluate the same tokens with the reference model
loaded from the same file, and the script prints max |logit difference| and the mean KL divergence of
llama.cpp's distribution from ours.

    .venv/bin/python scripts/llama_cpp_oracle.py FILE.gguf [FILE.gguf ...] [--tokens 32] [--seed 0] [--reference F32]
    .venv/bin/python scripts/llama_cpp_oracle.py --quantize SRC.gguf DST.gguf Q4_K_M   # llama.cpp's quantizer
    .venv/bin/python scripts/llama_cpp_oracle.py --make-models DIR   # the random models of docs/verification.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SDIST = REPO / ".cache" / "llama_cpp_python-0.3.36.tar.gz"
VENV = REPO / ".cache" / "llama-cpp-venv"
VENV_PYTHON = VENV / "bin" / "python"

# ggml's extra CPU buffer types (weight repacking, AMX) are switched off: on a CPU with AMX, -march=native builds
# ggml's AMX matmul, which crashed (SIGSEGV in ggml_backend_amx_mul_mat) on every quantized file on our machine
LLAMA_LOGITS = """
import sys, numpy as np
import llama_cpp.llama_cpp as lc
default_params = lc.llama_model_default_params
def plain_cpu_buffers():
    params = default_params()
    params.use_extra_bufts = False
    return params
lc.llama_model_default_params = plain_cpu_buffers
from llama_cpp import Llama
path, tokens, out, threads = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4])
llm = Llama(model_path=path, logits_all=True, n_ctx=len(tokens) + 8, n_batch=len(tokens), n_threads=threads,
            verbose=False)
llm.eval(tokens)
np.save(out, np.asarray(llm.scores[: len(tokens)], dtype=np.float32))
"""

LLAMA_QUANTIZE = """
import sys, ctypes, llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], sys.argv[3]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(rc)
"""


def build() -> None:
    """The binding (and llama.cpp inside it) compiled from the sdist, once."""
    if VENV_PYTHON.is_file() and subprocess.run([VENV_PYTHON, "-c", "import llama_cpp"]).returncode == 0:
        return
    if not SDIST.is_file():
        sys.exit(f"{SDIST} is absent: run `make setup` (it fetches the llama-cpp-python sdist from PyPI)")
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF "
                                       "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF",
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    print(f"building llama.cpp (llama-cpp-python) from {SDIST.name} into {VENV} ...", flush=True)
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", SDIST], env=env,
                   check=True)


def llama_logits(gguf: Path, tokens: list[int], threads: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        subprocess.run([VENV_PYTHON, "-c", LLAMA_LOGITS, str(gguf), ",".join(map(str, tokens)), str(out),
                        str(threads)], check=True)
        return np.load(out)


def our_logits(gguf: Path, tokens: list[int]) -> np.ndarray:
    import torch

    from rwkv_deploy.models import load_model

    model = load_model(gguf)
    with torch.no_grad():
        return model(torch.tensor([tokens]), model.init_state(1))[0][0].numpy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())


def compare(gguf: Path, tokens: list[int], threads: int, reference: Path | None) -> None:
    theirs, ours = llama_logits(gguf, tokens, threads), our_logits(gguf, tokens)
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    line = (f"{gguf.name}: {len(tokens)} tokens, max |logit diff| {np.abs(ours - theirs).max():.3g}, "
            f"mean KL(ours || llama.cpp) {kl_divergence(ours, theirs):.3g}, top-1 agreement {agree:.0%}, "
            f"logit std {ours.std():.3g}")
    if reference is not None:  # how far each side is from the unquantized model: the quantization error
        exact = our_logits(reference, tokens)
        line += (f"; against {reference.name}: ours {np.abs(ours - exact).max():.3g} (KL "
                 f"{kl_divergence(exact, ours):.3g}), llama.cpp {np.abs(theirs - exact).max():.3g} (KL "
                 f"{kl_divergence(exact, theirs):.3g})")
    print(line, flush=True)


def make_models(root: Path) -> None:
    """The random models of docs/verification.md: RWKV-7 and RWKV-6, 4 layers, 256 wide (RWKV-6 with
    rescale_every 2), each through a Hugging Face folder and llama.cpp's converter to F32 and Q8_0 GGUFs."""
    import shutil

    sys.path.insert(0, str(REPO))
    from rwkv_deploy.tokenization import WORLD_VOCAB_FILE
    from tests.helpers.hf_converters import write_bbuf_rwkv_folder, write_rwkv7_hf_folder
    from tests.helpers.llama_cpp import converter_tree, finish, start_conversion
    from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    tree = converter_tree(root / "llama.cpp")
    v7 = save_checkpoint(make_checkpoint("7", n_layer=4, n_embd=256, vocab_size=65536, seed=11), root / "v7.pth")
    v6 = make_checkpoint("6", n_layer=4, n_embd=256, vocab_size=65536, seed=12)
    save_checkpoint(v6, root / "v6.pth")
    folders = {"v7": write_rwkv7_hf_folder(v7, root / "hf7", vocab_file=WORLD_VOCAB_FILE),
               "v6": write_bbuf_rwkv_folder(v6, root / "hf6", "6", rescale_every=2, weights="safetensors")}
    shutil.copy(WORLD_VOCAB_FILE, folders["v6"])
    for version, folder in folders.items():
        for outtype in ("f32", "q8_0"):
            out = root / f"{version}-{outtype}.gguf"
            finish(start_conversion(tree, folder, out, outtype), out)
            print(f"{out}: llama.cpp's converter, {outtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=Path, help="an unquantized checkpoint of the same model (e.g. the F32 "
                                                        "GGUF): also print each side's distance from it")
    parser.add_argument("--quantize", nargs=3, metavar=("SRC", "DST", "FTYPE"))
    parser.add_argument("--make-models", type=Path, metavar="DIR", help="write the random test models there first")
    args = parser.parse_args()
    if args.make_models:
        make_models(args.make_models)
    build()
    if args.quantize:
        src, dst, ftype = args.quantize
        subprocess.run([VENV_PYTHON, "-c", LLAMA_QUANTIZE, src, dst, ftype], check=True)
        print(f"{dst}: llama.cpp's quantizer, {ftype}")
    if args.files:
        from rwkv_deploy.models.checkpoint.gguf import read_gguf_table

        for gguf in args.files:
            vocab = read_gguf_table(gguf).tensors["token_embd.weight"].shape[0]
            tokens = np.random.default_rng(args.seed).integers(1, min(vocab, 65530), args.tokens).tolist()
            compare(gguf, tokens, args.threads, args.reference)


if __name__ == "__main__":
    main()
