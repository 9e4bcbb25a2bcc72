"""GGUF files written by llama.cpp's own converter load as the model of the `.pth` they came from.

The chain per version: a random BlinkDL `.pth` -> a Hugging Face folder (RWKV-7: PyPI `rwkv7-hf`'s converter;
RWKV-6: BBuf's format, tests/helpers/hf_converters.py) -> llama.cpp's `convert_hf_to_gguf.py` from the
`llama-cpp-python` sdist (tests/helpers/llama_cpp.py), run offline. Q4_0, which that converter does not write,
comes from the `gguf` library's quantizer under llama.cpp's policy of what stays unquantized. The converter
insists on the World vocabulary, so the models have 65,536 tokens (at width 128 that is most of their weights).
"""

from __future__ import annotations

import functools
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.llama_cpp import sdist_missing_reason

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

if sdist_missing_reason():
    pytest.skip(sdist_missing_reason(), allow_module_level=True)
pytest.importorskip("rwkv7_hf")

from rwkv_deploy.errors import CheckpointError  # noqa: E402
from rwkv_deploy.models import load_checkpoint, load_model  # noqa: E402
from rwkv_deploy.models.checkpoint.gguf import (check_vocabulary, gguf_to_blinkdl, load_gguf_tensor,  # noqa: E402
                                                model_info, read_gguf_table, world_token_texts)
from rwkv_deploy.models.checkpoint.readers import read_tensors  # noqa: E402
from rwkv_deploy.models.inspection import summarize_checkpoint  # noqa: E402
from rwkv_deploy.tokenization import WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE  # noqa: E402
from tests.helpers.hf_converters import write_bbuf_rwkv_folder, write_rwkv7_hf_folder  # noqa: E402
from tests.helpers.llama_cpp import (KEPT_UNQUANTIZED, converter_tree, finish, quantizable, requantize,  # noqa: E402
                                     start_conversion)
from tests.helpers.random_checkpoints import make_checkpoint, save_checkpoint  # noqa: E402

SEQUENCES = torch.randint(0, WORLD_VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(5))
CONVERTED = {"v7": ("f32", "bf16", "q8_0"), "v6": ("f32", "q8_0")}  # by llama.cpp's converter
REQUANTIZED = ("F16", "Q4_0")  # from v7-f32 by the gguf library, under llama-quant.cpp's policy
RESCALE_EVERY = 1  # RWKV-6: llama.cpp bakes 2^(layer // rescale_every) into two matrices per layer: 1, 2, 4 here


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path: "v7.pth", "v6.pth", "v7-f32" ... "v6-q8_0" (CONVERTED), "v7-f16" and "v7-q4_0" (REQUANTIZED)."""
    root = tmp_path_factory.mktemp("gguf")
    tree = converter_tree(root / "llama.cpp")
    out = {"v7.pth": save_checkpoint(make_checkpoint("7", n_layer=2, n_embd=128, vocab_size=WORLD_VOCAB_SIZE, seed=3),
                                     root / "v7.pth")}
    v6 = make_checkpoint("6", n_layer=3, n_embd=128, vocab_size=WORLD_VOCAB_SIZE, seed=4)
    out["v6.pth"] = save_checkpoint(v6, root / "v6.pth")
    folders = {"v7": write_rwkv7_hf_folder(out["v7.pth"], root / "hf7", vocab_file=WORLD_VOCAB_FILE),
               "v6": write_bbuf_rwkv_folder(v6, root / "hf6", "6", rescale_every=RESCALE_EVERY, weights="safetensors")}
    shutil.copy(WORLD_VOCAB_FILE, folders["v6"])  # the converter reads the World vocab from the folder
    jobs = [(f"{v}-{t}", folders[v], t) for v, types in CONVERTED.items() for t in types]

    def convert(job: tuple[str, Path, str]) -> Path:
        name, folder, outtype = job
        target = root / f"{name}.gguf"
        return finish(start_conversion(tree, folder, target, outtype), target)

    with ThreadPoolExecutor(max_workers=2) as pool:  # two converters at a time: one per core
        done = {name: pool.submit(convert, job) for job in jobs for name in [job[0]]}
        f32 = done["v7-f32"].result()  # the first job: requantize from it while the others run
        out |= {f"v7-{t.lower()}": requantize(f32, root / f"v7-{t.lower()}.gguf", t) for t in REQUANTIZED}
        out |= {name: future.result() for name, future in done.items()}
    return out


@functools.cache  # each file's logits once per module (the .pth's are compared with every GGUF)
def logits(path: Path) -> torch.Tensor:
    model = load_model(path)
    with torch.no_grad():
        return model(SEQUENCES, model.init_state(len(SEQUENCES)))[0]


# --------------------------------------------------------------------------------------------------
# F32: exactly the .pth
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v7", "v6"])
def test_f32_gguf_is_exactly_the_pth(files: dict[str, Path], version: str) -> None:
    """Every converter step undone: the lerp fusing, LoRA orientation, layer 0's dummies, r_k, RWKV-6's rescale."""
    pth, gguf = load_checkpoint(files[f"{version}.pth"]), load_checkpoint(files[f"{version}-f32"])
    n_tensors = len(read_gguf_table(files[f"{version}-f32"]).tensors)
    assert gguf.source_format == "gguf" and gguf.stored_dtype == f"GGUF F32 (F32 {n_tensors} tensors)"
    assert gguf.config == pth.config
    assert gguf.tensors.keys() == pth.tensors.keys()
    unequal = [k for k in pth.tensors if not torch.equal(gguf.tensors[k], pth.tensors[k])]
    assert unequal == []
    diff = (logits(files[f"{version}-f32"]) - logits(files[f"{version}.pth"])).abs().max().item()
    print(f"{version} F32 GGUF vs .pth: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("version", ["v7", "v6"])
def test_key_map_runs_on_shapes_alone(files: dict[str, Path], version: str) -> None:
    """For lazily loaded tensors: the map runs on meta tensors (no data) and gives the `.pth`'s names and shapes
    (less layer 0's v0/v1/v2, which no reference reads and GGUF files carry only as dummies)."""
    table = read_gguf_table(files[f"{version}-q8_0"])
    meta = {name: torch.empty(entry.shape, device="meta") for name, entry in table.tensors.items()}
    mapped = gguf_to_blinkdl(meta, model_info(table), table.path)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    pth = {k: tuple(t.shape) for k, t in torch.load(files[f"{version}.pth"], mmap=True).items() if k not in unused}
    assert {k: tuple(t.shape) for k, t in mapped.items()} == pth


def test_rwkv6_rescale_is_baked_into_the_file_and_undone_on_load(files: dict[str, Path]) -> None:
    """The converter divides time_mix_output and channel_mix_value by 2^(layer // rescale_every)."""
    table = read_gguf_table(files["v6-f32"])
    assert table.metadata["rwkv6.rescale_every_n_layers"] == RESCALE_EVERY
    pth = torch.load(files["v6.pth"])
    stored = load_gguf_tensor(table.path, table.tensors["blk.2.channel_mix_value.weight"])
    assert torch.equal(stored * 4.0, pth["blocks.2.ffn.value.weight"])


# --------------------------------------------------------------------------------------------------
# Lower precisions: the gguf library's own decoding, bit for bit, and the error each type allows
# --------------------------------------------------------------------------------------------------

LOW = ["v7-f16", "v7-bf16", "v7-q8_0", "v7-q4_0", "v6-q8_0"]


@functools.cache  # the library reads the 65,536-token metadata slowly: once per file
def library_reading(path: Path):
    from gguf import GGUFReader

    return GGUFReader(path)


@pytest.mark.parametrize("name", ["v7-q8_0", "v7-q4_0"])  # BF16 and F16 are checked against torch's rounding below
def test_table_and_dequantization_equal_the_gguf_library(files: dict[str, Path], name: str) -> None:
    from gguf.quants import dequantize

    ours, theirs = read_gguf_table(files[name]), library_reading(files[name])
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        entry = ours.tensors[t.name]
        assert entry.offset == int(t.data_offset)  # the library reports it from the start of the file
        assert (entry.shape, entry.type_name, entry.n_bytes) == (tuple(int(d) for d in reversed(t.shape)),
                                                                 t.tensor_type.name, int(t.n_bytes))
        expected = dequantize(np.asarray(t.data), t.tensor_type).reshape(entry.shape)
        assert np.array_equal(load_gguf_tensor(files[name], entry).numpy(), expected), t.name


def _block_error_bound(reference: np.ndarray, type_name: str) -> np.ndarray:
    """Per value, the most Q8_0 / Q4_0 may move it within its 32-block: half a step d = max|x| / 127 for Q8_0, a
    whole step d = max|x| / 8 for Q4_0 (the side opposite the extreme value clips at 7 d), plus |q| times the
    fp16 rounding of d (relative 2^-11; |q| <= 127 or 8)."""
    block_max = np.abs(reference.reshape(-1, 32)).max(axis=1, keepdims=True)
    d = block_max / {"Q8_0": 127, "Q4_0": 8}[type_name]
    bound = d * {"Q8_0": 0.5 + 127 * 2.0**-11, "Q4_0": 1 + 8 * 2.0**-11}[type_name] * (1 + 1e-6)
    return np.broadcast_to(bound, (block_max.shape[0], 32)).reshape(reference.shape)


@pytest.mark.parametrize("name", LOW)
def test_every_value_within_its_type_of_the_f32_file(files: dict[str, Path], name: str) -> None:
    """Against the converter's F32 file of the same folder (the values before rounding), tensor by tensor."""
    low, f32 = read_gguf_table(files[name]), read_gguf_table(files[f"{name[:2]}-f32"])
    rounded = 0
    for tensor_name, entry in low.tensors.items():
        got = load_gguf_tensor(low.path, entry).numpy()
        ref = load_gguf_tensor(f32.path, f32.tensors[tensor_name]).numpy()
        if len(entry.shape) == 1 or tensor_name.endswith(KEPT_UNQUANTIZED[-1]):
            assert entry.type_name == "F32", tensor_name  # both the converter's and llama-quant's policy
        if name in ("v7-f16", "v7-q4_0"):  # REQUANTIZED: llama-quant.cpp's policy
            assert (entry.type_name != "F32") == quantizable(tensor_name, len(entry.shape)), tensor_name
        if entry.type_name == "F32":
            assert np.array_equal(got, ref), tensor_name
            continue
        rounded += 1
        if entry.type_name == "F16":
            assert np.array_equal(got, ref.astype(np.float16).astype(np.float32)), tensor_name
        elif entry.type_name == "BF16":
            assert torch.equal(torch.from_numpy(got), torch.from_numpy(ref).to(torch.bfloat16).float()), tensor_name
        else:
            assert np.all(np.abs(got - ref) <= _block_error_bound(ref, entry.type_name)), tensor_name
    assert rounded >= 10


# measured max |logit diff| against the .pth on SEQUENCES: f16 5.5e-3, bf16 8.1e-2, v7 q8_0 0.145, q4_0 1.47,
# v6 q8_0 0.103 (logit std 1.0); the bounds leave about 3x
LOGIT_BOUNDS = {"v7-f16": 0.02, "v7-bf16": 0.25, "v7-q8_0": 0.45, "v7-q4_0": 4.5, "v6-q8_0": 0.35}


@pytest.mark.parametrize("name", LOW)
def test_logits_within_the_expected_dequantization_error(files: dict[str, Path], name: str) -> None:
    ref, got = logits(files[f"{name[:2]}.pth"]), logits(files[name])
    diff = (got - ref).abs().max().item()
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1).mean().item()
    print(f"{name} GGUF vs .pth: max |logit diff| = {diff:.3g}, mean KL = {kl:.3g}")
    assert 0 < diff <= LOGIT_BOUNDS[name]


def test_inspect_names_the_format_and_the_dominant_type(files: dict[str, Path]) -> None:
    summary = summarize_checkpoint(files["v7-q8_0"])
    assert summary.format == "gguf" and summary.version == "7"
    assert summary.stored_dtype.startswith("GGUF Q8_0 (Q8_0 ")
    assert summarize_checkpoint(files["v7-q4_0"]).stored_dtype.startswith("GGUF Q4_0 (Q4_0 ")


# --------------------------------------------------------------------------------------------------
# The World tokenizer in the metadata, and the export
# --------------------------------------------------------------------------------------------------


def test_metadata_carries_our_world_vocabulary(files: dict[str, Path]) -> None:
    table = read_gguf_table(files["v7-f32"])
    assert table.metadata["tokenizer.ggml.model"] == "rwkv"
    assert check_vocabulary(table) == "world"
    tokens = table.metadata["tokenizer.ggml.tokens"]
    assert tuple(tokens[:len(world_token_texts())]) == world_token_texts() and tokens[-1] == "[PAD65535]"


def test_export_of_the_gguf_matches_export_of_the_pth(files: dict[str, Path], tmp_path: Path) -> None:
    """Both packages computed by ONNX Runtime; the GGUF's package carries the World tokenizer."""
    from tests.helpers.onnx_compare import package_logits

    from rwkv_deploy.export.package_builder import ExportOptions, export_package

    results = []
    for source in (files["v7.pth"], files["v7-f32"]):
        package = tmp_path / source.name
        manifest = export_package(source, package, ExportOptions())
        results.append((manifest, package_logits(package, SEQUENCES[0])))
    (_, from_pth), (manifest, from_gguf) = results
    assert manifest.source["format"] == "gguf"
    assert manifest.tokenizer.kind == "world" and manifest.tokenizer.files == ["tokenizer/rwkv_vocab_v20230424.txt"]
    diff = float(np.abs(from_gguf - from_pth).max())
    print(f"export of the F32 GGUF vs export of its .pth (ONNX Runtime): max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5


# --------------------------------------------------------------------------------------------------
# Bad files: one CheckpointError line naming the file
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def q8_layout(files: dict[str, Path]) -> dict[str, object]:
    """Where the bad-file cases below edit the Q8_0 file, from the gguf library's reading of it (read once: slow)."""
    reader = library_reading(files["v7-q8_0"])

    def entry(index: int) -> tuple[str, int]:  # (name, offset of its n_dims)
        tensor = reader.tensors[index]
        return tensor.name, int(tensor.field.offset) + 8 + len(tensor.name.encode())

    def value_at(key: str) -> int:  # after the key's length, the key and the value type
        return int(reader.fields[key].offset) + 8 + len(key) + 4

    return {"arch": value_at("general.architecture") + 8, "tokens": value_at("tokenizer.ggml.tokens") + 4,
            "width": value_at("rwkv7.embedding_length"),
            "first": entry(0), "last": entry(-1)}


def _put(data: bytearray, at: int, fmt: str, value: int) -> bytearray:
    struct.pack_into(fmt, data, at, value)
    return data


def _bad_cases(data: bytes, layout: dict) -> dict[str, tuple[object, str]]:
    arch, tokens_count = layout["arch"], layout["tokens"]
    (first_name, first), (last_name, last) = layout["first"], layout["last"]
    last_offset = last + 4 + 8 * struct.unpack_from("<I", data, last)[0] + 4  # n_dims, dims, type, offset
    return {
        "wrong magic": (lambda d: b"GGML" + d[4:], "not a GGUF file (bad magic)"),
        "version": (lambda d: _put(d, 4, "<I", 1), "unsupported GGUF version 1"),
        "truncated header": (lambda d: d[:arch + 2], "truncated GGUF file"),
        "truncated data": (lambda d: d[:len(data) - 1000], "lies outside the file"),
        "not rwkv": (lambda d: d[:arch] + b"llama" + d[arch + 5:],
                     "GGUF architecture llama is not an RWKV model we read; rwkv6 and rwkv7 are"),
        "offset beyond file": (lambda d: _put(d, last_offset, "<Q", 1 << 40),
                               f"GGUF tensor {last_name!r} lies outside"),
        "absurd n_dims": (lambda d: _put(d, first, "<I", 4000), f"GGUF tensor {first_name!r} declares 4000 dimensions"),
        "absurd dims": (lambda d: _put(d, first + 4, "<Q", 1 << 62), f"GGUF tensor {first_name!r} has absurd dims"),
        "huge array": (lambda d: _put(d, tokens_count, "<Q", 1 << 50), "more than the file can hold"),
        "other vocabulary": (lambda d: d.replace(b"[PAD65535]", b"[PAD99999]"),
                             "GGUF World vocabulary differs from rwkv_vocab_v20230424 (first at token 65535)"),
        "wrong width": (lambda d: _put(d, layout["width"], "<I", 64),
                        "has shape [128], not the 64 values the metadata's sizes give"),
        "unknown tensor": (lambda d: d.replace(b"blk.1.time_mix_k_k.weight", b"blk.1.time_mix_q_q.weight"),
                           "GGUF tensor 'blk.1.time_mix_q_q.weight' is not part of an rwkv7 model"),
    }


BAD = ["wrong magic", "version", "truncated header", "truncated data", "not rwkv", "offset beyond file",
       "absurd n_dims", "absurd dims", "huge array", "other vocabulary", "wrong width", "unknown tensor"]


@pytest.mark.parametrize("case", BAD)
def test_bad_gguf_is_one_line_naming_the_file(files: dict[str, Path], q8_layout: dict, tmp_path: Path,
                                              case: str) -> None:
    data = files["v7-q8_0"].read_bytes()
    edit, fragment = _bad_cases(data, q8_layout)[case]
    path = tmp_path / "damaged model.gguf"
    path.write_bytes(edit(bytearray(data)))
    with pytest.raises(CheckpointError) as info:
        read_tensors(path) if case != "wrong magic" else read_gguf_table(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert fragment in message, message


def test_every_bad_gguf_through_the_real_cli_is_one_line_exit_2_and_no_output(files: dict[str, Path],
                                                                               q8_layout: dict,
                                                                               tmp_path: Path) -> None:
    """The census class for GGUF: `rwkv-deploy export` on each damaged file, in its own process."""
    import subprocess
    import sys

    data = files["v7-q8_0"].read_bytes()

    def run(case: str) -> tuple[str, subprocess.CompletedProcess, Path]:
        edit, _ = _bad_cases(data, q8_layout)[case]
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        (folder / "model.gguf").write_bytes(edit(bytearray(data)))
        done = subprocess.run([sys.executable, "-m", "rwkv_deploy.cli.main", "export", str(folder / "model.gguf"),
                               "--out", str(folder / "out"), "--quiet"], capture_output=True, text=True, timeout=300)
        return case, done, folder

    with ThreadPoolExecutor(4) as pool:
        for case, done, folder in pool.map(run, BAD):
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert done.returncode == 2, (case, done.stderr[-2000:])
            assert len(lines) == 1 and lines[0].startswith("error: ") and "model.gguf" in lines[0], (case, lines)
            assert sorted(p.name for p in folder.iterdir()) == ["model.gguf"], case  # nothing written
