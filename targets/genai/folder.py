"""Write the GenAI folder of a verified package: decoder graph, genai_config.json, record of every file.

    OUT/genai_config.json        model type "lfm2" (GenAI's RecurrentState: per-layer conv + recurrent states)
    OUT/model.onnx               the decoder graph (targets.genai.decoder), weights inside or in model.onnx.data
    OUT/rwkv-deploy-genai.json   what was written and from what: every file with its sha256 (our trust rules)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest import Manifest, sha256_file
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.staging import staged_directory, staged_files

DECODER_FILE = "model.onnx"
DECODER_DATA = "model.onnx.data"
CONFIG_FILE = "genai_config.json"
RECORD_FILE = "rwkv-deploy-genai.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENAI_MODEL_TYPE = "qwen3_5_text"  # its RecurrentState: conv + recurrent per "linear_attention" layer
LAYER_TYPE = "linear_attention"
SUPPORTED_VERSIONS = ("5.0", "5.1", "5.2", "6", "7")
INLINE_LIMIT = 1 << 30  # larger decoders keep their weights in model.onnx.data (protobuf's 2 GiB ceiling)


class GenaiError(RefusedError):
    """A package that cannot become a GenAI folder, or an output that may not be written."""


@dataclass(frozen=True)
class GenaiFolder:
    path: Path
    files: tuple[str, ...]


def refusal(manifest: Manifest) -> str | None:
    """Why the package cannot become a GenAI folder, or None. GenAI zero-fills state and has two tensors
    per layer; RWKV-4 has five (one starting at -1e30) and state-tuned packages start elsewhere."""
    if manifest.model.version not in SUPPORTED_VERSIONS:
        return (f"RWKV-{manifest.model.version} is not supported by ONNX Runtime GenAI folders (five states per "
                "layer, one starting at -1e30; GenAI zero-fills two): use RWKV-5.x, 6 or 7")
    tuned = [s.name for s in manifest.state if s.init_file is not None or s.init != 0]
    if tuned:
        return (f"a state-tuned package (state {tuned[0]} does not start at zero) cannot be run by ONNX Runtime "
                "GenAI, which zero-fills its state")
    if "prefill" not in manifest.graphs:
        return "exported without --prefill: export it again with --prefill to make a GenAI folder"
    parts = {s.name.split(".", 1)[-1] for s in manifest.state}
    if parts != {"att_shift", "wkv", "ffn_shift"}:
        return f"state entries {sorted(parts)}: expected att_shift, wkv and ffn_shift per layer"
    return None


def genai_config(manifest: Manifest, context_length: int = 1 << 20) -> dict:
    """genai_config.json: GenAI's names for our decoder's inputs and outputs (see decoder.py)."""
    from .decoder import (INPUT_IDS, LOGITS, PAST_CONV, PAST_RECURRENT, PRESENT_CONV,
                          PRESENT_RECURRENT)

    m = manifest.model
    eos = manifest.tokenizer.eos_token_id
    return {"model": {
        "bos_token_id": 0, "context_length": context_length,
        "decoder": {"session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                    "filename": DECODER_FILE, "head_size": m.head_size or m.n_embd, "hidden_size": m.n_embd,
                    "inputs": {"input_ids": INPUT_IDS,
                               "past_conv_names": PAST_CONV, "past_recurrent_names": PAST_RECURRENT},
                    "outputs": {"logits": LOGITS, "present_conv_names": PRESENT_CONV,
                                "present_recurrent_names": PRESENT_RECURRENT},
                    "num_attention_heads": m.n_head, "num_hidden_layers": m.n_layer,
                    "num_key_value_heads": m.n_head, "layer_types": [LAYER_TYPE] * m.n_layer},
        "eos_token_id": eos if eos is not None else m.vocab_size, "pad_token_id": m.vocab_size,
        "type": GENAI_MODEL_TYPE, "vocab_size": m.vocab_size + 1},
        "search": {"do_sample": False, "max_length": context_length, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "temperature": 1.0,
                   "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0, "early_stopping": True}}


def build_decoder(package_dir: Path, manifest: Manifest):
    """The decoder model of a verified package: its step graph for decoding, its prefill graph for prompts."""
    import onnx

    from rwkv_deploy.package.names import (PREFILL_GRAPH, PREFILL_LOGITS_ALL, PREFILL_TOKENS_INPUT,
                                           STEP_GRAPH)

    from .decoder import PrefillGraph, decoder_graph

    def load(graph: str) -> onnx.ModelProto:
        return onnx.load(str(package_dir / manifest.graphs[graph].path), load_external_data=True)

    types = {s.name: {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}[s.dtype]
             for s in manifest.state}
    prefill = PrefillGraph(load(PREFILL_GRAPH), PREFILL_TOKENS_INPUT, manifest.logits_output,
                           manifest.graphs[PREFILL_GRAPH].logits == PREFILL_LOGITS_ALL)
    return decoder_graph(load(STEP_GRAPH), manifest.model.n_layer, manifest.token_input, manifest.logits_output,
                         {s.name: s.input for s in manifest.state}, {s.name: s.output for s in manifest.state},
                         types, prefill)


def write_genai_folder(package_dir: str | Path, out: str | Path, force: bool = False) -> GenaiFolder:
    """Write the GenAI folder of the verified package `package_dir` to `out`, atomically (a staging sibling
    renamed into place). Refused (GenaiError, exit 2) for packages GenAI cannot run."""
    import onnx

    from rwkv_deploy.package.verify import verify_package

    package_dir, out = Path(package_dir), Path(out)
    if not package_dir.is_dir():
        raise GenaiError(f"{package_dir}: no such package directory")
    if out.is_symlink():
        raise GenaiError(f"{out}: is a symbolic link; refusing to write through it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise GenaiError(f"{out}: exists and is not an empty directory (use --force to replace it)")
    if out.resolve().is_relative_to(package_dir.resolve()) or package_dir.resolve().is_relative_to(out.resolve()):
        raise GenaiError(f"{out}: overlaps the package directory {package_dir}")
    problems = verify_package(package_dir)
    if problems:
        raise GenaiError(f"{package_dir}: not written as a GenAI folder, it fails verification: {problems[0]}")
    manifest = read_manifest(package_dir)
    why = refusal(manifest)
    if why:
        raise GenaiError(f"{package_dir}: {why}")
    model = build_decoder(package_dir, manifest)
    with staged_directory(out, replace=force) as tmp:
        external = model.ByteSize() > INLINE_LIMIT
        onnx.save_model(model, str(tmp / DECODER_FILE), save_as_external_data=external,
                        location=DECODER_DATA if external else None, all_tensors_to_one_file=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(genai_config(manifest), indent=2) + "\n")
        if manifest.tokenizer.kind == "hf":  # og.Tokenizer reads tokenizer.json (+ tokenizer_config.json)
            for name in manifest.tokenizer.files:  # verified above: relative, inside the package, hashed
                shutil.copyfile(package_dir / name, tmp / Path(name).name)
            if not (tmp / TOKENIZER_CONFIG).exists():
                (tmp / TOKENIZER_CONFIG).write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}) + "\n")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in staged_files(tmp)}
        record = {"format_version": 1, "producer": "rwkv-deploy", "target": "onnxruntime-genai==0.18.0",
                  "source": {"package": package_dir.resolve().name,
                             "manifest_sha256": sha256_file(package_dir / "manifest.json")},
                  "model": {"version": manifest.model.version, "n_layer": manifest.model.n_layer,
                            "vocab_size": manifest.model.vocab_size},
                  "files": files}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        written = tuple(p.relative_to(tmp).as_posix() for p in staged_files(tmp))
    return GenaiFolder(out, written)


def check_folder(folder: str | Path) -> list[str]:
    """Problems of a GenAI folder against its record: missing, changed or unlisted files."""
    folder = Path(folder)
    record = json.loads((folder / RECORD_FILE).read_text())
    problems = []
    for name, digest in sorted(record["files"].items()):
        path = folder / name
        if not path.is_file() or path.is_symlink():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: sha256 differs from {RECORD_FILE}")
    listed = set(record["files"]) | {RECORD_FILE}
    problems += [f"{p.name}: not listed in {RECORD_FILE}" for p in sorted(folder.iterdir()) if p.name not in listed]
    return problems
