"""The cases of the hostile-input corpus (tests/helpers/hostile.py explains the judging), by the classes of
issue 14's table. Each builder makes its inputs under `root` and returns the `rwkv-deploy` arguments."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from tests.helpers.hostile import (MARKER, Case, Material, copy_package, edit, generate, manifest_of, npy_bytes,
                                   npz_with, outside, patch_central_flags, pickle_bomb, relist, rewrite_zip,
                                   step_graph, zip_pickle_bomb, zip_with)

TINY_VALIDATE = ["--steps", "2", "--batch", "1", "--greedy-tokens", "1", "--quiet"]


def _pkg(root: Path, m: Material) -> Path:
    return copy_package(root, m)


# -- dangerous: writes through links, links packaged, unverified graphs run, inputs deleted ---------------------


def validate_report_link(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    victim = outside(root)
    (pkg / "validation").mkdir()
    os.symlink(victim, pkg / "validation" / "report.md")
    return ["validate", str(pkg), "--checkpoint", str(m.checkpoint), *TINY_VALIDATE]


def validate_folder_link(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    outside(root)
    os.symlink(root / "outside", pkg / "validation")
    return ["validate", str(pkg), "--checkpoint", str(m.checkpoint), *TINY_VALIDATE]


def validate_report_dir_with_user_files(root: Path, m: Material) -> list[str]:
    outside(root)
    return ["validate", str(m.package), "--checkpoint", str(m.checkpoint), "-o", str(root / "outside"),
            *TINY_VALIDATE]


def validate_fresh_report(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    return ["validate", str(pkg), "--checkpoint", str(m.checkpoint), *TINY_VALIDATE]


def verify_report_link(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    (pkg / "validation").mkdir()
    os.symlink(outside(root), pkg / "validation" / "report.md")
    return ["verify", str(pkg)]


def package_link_in_validation(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    (pkg / "validation").mkdir()
    os.symlink(outside(root, "secret.txt", "a private key\n"), pkg / "validation" / "notes.txt")
    return ["package", str(pkg), "-o", str(root / "out.zip")]


def package_linked_graph(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    graph = step_graph(pkg)
    (root / "outside").mkdir()
    shutil.move(pkg / graph, root / "outside" / graph)
    os.symlink(root / "outside" / graph, pkg / graph)  # same bytes, same hash: only the link is wrong
    return ["package", str(pkg), "-o", str(root / "out.zip")]


def package_linked_folder(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    outside(root)
    os.symlink(root / "outside", pkg / "validation")
    return ["package", str(pkg), "-o", str(root / "out.zip")]


def package_output_link(root: Path, m: Material) -> list[str]:
    os.symlink(outside(root), root / "out.zip")
    return ["package", str(m.package), "-o", str(root / "out.zip"), "--force"]


def generate_linked_graph(root: Path, m: Material) -> list[str]:
    package_linked_graph(root, m)
    return generate(root / "pkg")


def generate_absolute_graph(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    graph = step_graph(pkg)
    (root / "outside").mkdir()
    shutil.copy(pkg / graph, root / "outside" / "outside.onnx")
    edit(pkg, lambda d: d["graphs"]["step"].update(path=str(root / "outside" / "outside.onnx")))
    return generate(pkg)


def generate_dotdot_graph(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    shutil.copy(pkg / step_graph(pkg), root / "outside.onnx")
    edit(pkg, lambda d: d["graphs"]["step"].update(path="../outside.onnx"))
    return generate(pkg)


def generate_dotdot_graph_no_verify(root: Path, m: Material) -> list[str]:
    return generate_dotdot_graph(root, m) + ["--no-verify"]


def generate_unlisted_graph(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    shutil.copy(pkg / step_graph(pkg), pkg / "extra.onnx")
    edit(pkg, lambda d: d["graphs"]["step"].update(path="extra.onnx"))
    return generate(pkg)


def generate_empty_files_flipped_byte(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    data_name = manifest_of(pkg)["graphs"]["step"]["external_data"] or step_graph(pkg)
    data = bytearray((pkg / data_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / data_name).write_bytes(bytes(data))
    edit(pkg, lambda d: d.update(files={}))
    return generate(pkg)


def generate_flipped_byte(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    data_name = manifest_of(pkg)["graphs"]["step"]["external_data"] or step_graph(pkg)
    data = bytearray((pkg / data_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / data_name).write_bytes(bytes(data))
    return generate(pkg)


def generate_outside_init_file(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    np.savez(root / "state.npz", **{"layer0.att_shift": np.zeros(64, np.float32)})
    edit(pkg, lambda d: d["state"][0].update(init_file="../state.npz"))
    return generate(pkg)


def generate_outside_tokenizer(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    outside(root, "vocab.txt")
    edit(pkg, lambda d: d["tokenizer"].update(kind="world", files=["../outside/vocab.txt"]))
    return generate(pkg)


def generate_unlisted_file(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    (pkg / "notes.py").write_text("print('hello')\n")
    return generate(pkg)


def export_out_is_checkpoint(root: Path, m: Material) -> list[str]:
    shutil.copy(m.checkpoint, root / "model.pth")
    return ["export", str(root / "model.pth"), "--out", str(root / "model.pth"), "--force", "--quiet"]


def export_out_is_checkpoint_folder(root: Path, m: Material) -> list[str]:
    (root / "models").mkdir()
    shutil.copy(m.checkpoint, root / "models" / "model.pth")
    (root / "models" / "notes.txt").write_text("my notes\n")
    return ["export", str(root / "models" / "model.pth"), "--out", str(root / "models"), "--force", "--quiet"]


def export_out_is_a_file(root: Path, m: Material) -> list[str]:
    outside(root)
    return ["export", str(m.checkpoint), "--out", str(root / "outside" / "victim.txt"), "--force", "--quiet"]


def export_out_is_cwd(root: Path, m: Material) -> list[str]:
    (root / "work").mkdir()
    (root / "work" / "todo.txt").write_text("keep me\n")
    return ["export", str(m.checkpoint), "--out", str(root / "work"), "--force", "--quiet"]


def export_out_holds_cwd(root: Path, m: Material) -> list[str]:
    (root / "work" / "sub").mkdir(parents=True)
    (root / "work" / "todo.txt").write_text("keep me\n")
    return ["export", str(m.checkpoint), "--out", str(root / "work"), "--force", "--quiet"]


def export_out_not_a_package(root: Path, m: Material) -> list[str]:
    outside(root)
    return ["export", str(m.checkpoint), "--out", str(root / "outside"), "--force", "--quiet"]


def export_out_link(root: Path, m: Material) -> list[str]:
    (root / "outside").mkdir()
    os.symlink(root / "outside", root / "out")
    return ["export", str(m.checkpoint), "--out", str(root / "out"), "--force", "--quiet"]


def export_tokenizer_inside_out(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    (pkg / "tokenizer.json").write_text("{}")
    return ["export", str(m.checkpoint), "--out", str(pkg), "--tokenizer", str(pkg / "tokenizer.json"), "--force",
            "--quiet"]


# -- memory: sizes declared by the input, checked before allocating ----------------------------------------------


def verify_big_stored_manifest(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    data = manifest_of(pkg)
    data["producer"]["padding"] = " " * (5 << 20)
    (pkg / "manifest.json").write_text(json.dumps(data))
    return ["verify", str(pkg)]


def generate_big_manifest(root: Path, m: Material) -> list[str]:
    verify_big_stored_manifest(root, m)
    return generate(root / "pkg")


def _deflated_manifest_archive(root: Path, m: Material, name: str) -> Path:
    def change(info: zipfile.ZipInfo, data: bytes):
        if info.filename == name:
            info.compress_type = zipfile.ZIP_DEFLATED
            data = data + b" " * (64 << 20)  # 64 MiB of spaces deflate to ~64 KB
        return info, data
    return rewrite_zip(m.archive, root / "model.zip", change)


def verify_deflated_manifest(root: Path, m: Material) -> list[str]:
    return ["verify", str(_deflated_manifest_archive(root, m, "manifest.json"))]


def generate_deflated_manifest(root: Path, m: Material) -> list[str]:
    return generate(_deflated_manifest_archive(root, m, "manifest.json"))


def verify_deflated_index(root: Path, m: Material) -> list[str]:
    return ["verify", str(_deflated_manifest_archive(root, m, "PACKAGE.json"))]


def _init_file_package(root: Path, m: Material, member: bytes) -> Path:
    pkg = _pkg(root, m)
    (pkg / "initial_state.npz").write_bytes(npz_with({"layer0.wkv.npy": member}))
    edit(pkg, lambda d: d["state"][1].update(init_file="initial_state.npz"))
    relist(pkg, "initial_state.npz")
    return pkg


def generate_npz_declares_huge(root: Path, m: Material) -> list[str]:
    return generate(_init_file_package(root, m, npy_bytes((100000, 100000))))


def verify_npz_declares_huge(root: Path, m: Material) -> list[str]:
    return ["verify", str(_init_file_package(root, m, npy_bytes((100000, 100000))))]


def _stride_zero_checkpoint(root: Path, m: Material) -> Path:
    import torch

    tensors = torch.load(m.checkpoint, weights_only=True)
    width = tensors["emb.weight"].shape[1]
    for key in ("emb.weight", "head.weight"):  # a 67 M-token vocabulary (17 GB in fp32) stored as one value each
        tensors[key] = torch.zeros(1).expand(1 << 26, width)
    torch.save(tensors, root / "expanded.pth")
    return root / "expanded.pth"


def inspect_stride_zero(root: Path, m: Material) -> list[str]:
    return ["inspect", str(_stride_zero_checkpoint(root, m))]


def export_stride_zero(root: Path, m: Material) -> list[str]:
    return ["export", str(_stride_zero_checkpoint(root, m)), "--out", str(root / "out"), "--quiet"]


def bench_huge_shape(root: Path, m: Material) -> list[str]:
    return ["bench", "--shape", "7:64:65536:65536", "--work-dir", str(root / "cache"), "--out", str(root / "b")]


def bench_huge_vocab(root: Path, m: Material) -> list[str]:
    return ["bench", "--shape", "7:1:64:1000000000000", "--work-dir", str(root / "cache"), "--out", str(root / "b")]


def generate_manifest_huge_state(root: Path, m: Material) -> list[str]:
    pkg = _pkg(root, m)
    edit(pkg, lambda d: d["state"][0].update(shape=["batch", 1 << 20, 1 << 20]))
    return generate(pkg)


# -- non-finite numbers --------------------------------------------------------------------------------------------


def _nan_graph(root: Path, m: Material) -> Path:
    import onnx
    from onnx import numpy_helper

    pkg = _pkg(root, m)
    manifest = manifest_of(pkg)
    graph = manifest["graphs"]["step"]
    path = pkg / graph["path"]
    model = onnx.load(str(path), load_external_data=True)
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(biggest).copy()
    array[...] = np.nan
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    onnx.save(model, str(path))  # inline: the step graph no longer uses the shared external data
    edit(pkg, lambda d: (d["graphs"].pop("prefill", None), d["graphs"]["step"].update(external_data=None),
                         d["files"].pop(graph["external_data"], None),
                         d["files"].pop(manifest["graphs"].get("prefill", {}).get("path", ""), None)))
    for name in (graph["external_data"], manifest["graphs"].get("prefill", {}).get("path")):
        if name:
            (pkg / name).unlink()
    relist(pkg, graph["path"])
    return pkg


def generate_nan_logits(root: Path, m: Material) -> list[str]:
    return generate(_nan_graph(root, m))


def generate_nan_init_file(root: Path, m: Material) -> list[str]:
    return generate(_init_file_package(root, m, npy_bytes((4, 16, 16), data=np.full((4, 16, 16), np.nan, "<f4").tobytes())))


def generate_inf_init_file(root: Path, m: Material) -> list[str]:
    return generate(_init_file_package(root, m, npy_bytes((4, 16, 16), data=np.full((4, 16, 16), np.inf, "<f4").tobytes())))


def generate_option(*options: str):
    def build(root: Path, m: Material) -> list[str]:
        return ["generate", str(_pkg(root, m)), "--prompt", "Hi", "--max-tokens", "3", *options]
    build.__name__ = "generate " + " ".join(options)
    return build


# -- malformed manifests, checkpoints, archives, prompts: one line, never a traceback ------------------------------


def manifest_edit(command: str, change):
    def build(root: Path, m: Material) -> list[str]:
        pkg = _pkg(root, m)
        data = manifest_of(pkg)
        result = change(data)
        if isinstance(result, str):
            result = result.encode()
        (pkg / "manifest.json").write_bytes(result if isinstance(result, bytes) else json.dumps(
            data if result is None else result).encode())
        return generate(pkg) if command == "generate" else [command, str(pkg)]
    return build


def _set(path: str, value):
    def change(data: dict):
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return change


def hf_folder(index: str | None, shards: dict[str, bytes] = {}):
    def build(root: Path, m: Material) -> list[str]:
        folder = root / "hf"
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "rwkv"}')
        if index is not None:
            (folder / "model.safetensors.index.json").write_text(index)
        for name, data in shards.items():
            (folder / name).write_bytes(data)
        return ["inspect", str(folder)]
    return build


def _archive_flag(flag: int = 0, method: int | None = None, member: str = "manifest.json"):
    def build(root: Path, m: Material) -> list[str]:
        target = root / "model.zip"
        shutil.copy(m.archive, target)
        patch_central_flags(target, member, flag, method)
        return ["verify", str(target)]
    return build


def generate_archive_flag(flag: int = 0, method: int | None = None):
    def build(root: Path, m: Material) -> list[str]:
        return generate(Path(_archive_flag(flag, method)(root, m)[1]))
    return build


def prompt_bytes_argv(root: Path, m: Material) -> list[str]:
    return ["generate", str(_pkg(root, m)), "--prompt", os.fsdecode(b"caf\xe9 \xff"), "--max-tokens", "2"]


def prompt_file_bad_utf8(root: Path, m: Material) -> list[str]:
    (root / "prompt.txt").write_bytes(b"abc\xff\xfe")
    return ["generate", str(_pkg(root, m)), "--prompt-file", str(root / "prompt.txt"), "--max-tokens", "2"]


def prompt_file_ok(root: Path, m: Material) -> list[str]:
    (root / "prompt.txt").write_text("Hello from a file\n" * 50)
    return ["generate", str(_pkg(root, m)), "--prompt-file", str(root / "prompt.txt"), "--max-tokens", "2", "--greedy"]


def prompt_stdin_ok(root: Path, m: Material) -> list[str]:
    return ["generate", str(_pkg(root, m)), "--prompt", "-", "--max-tokens", "2", "--greedy"]


def prompt_missing_file(root: Path, m: Material) -> list[str]:
    return ["generate", str(_pkg(root, m)), "--prompt-file", str(root / "nope.txt")]


def prompt_none(root: Path, m: Material) -> list[str]:
    return ["generate", str(_pkg(root, m))]


def package_disk_full(root: Path, m: Material) -> list[str]:
    return ["package", str(m.package), "-o", str(root / "out.zip")]


def export_disk_full(root: Path, m: Material) -> list[str]:
    return ["export", str(m.checkpoint), "--out", str(root / "out"), "--quiet"]


def export_opset(opset: str):
    def build(root: Path, m: Material) -> list[str]:
        return ["export", str(m.checkpoint), "--out", str(root / "out"), "--opset", opset, "--quiet"]
    return build


def empty_vocab_checkpoint(root: Path, m: Material) -> list[str]:
    import torch

    tensors = torch.load(m.checkpoint, weights_only=True)
    tensors["emb.weight"] = tensors["emb.weight"][:0]
    tensors["head.weight"] = tensors["head.weight"][:0]
    torch.save(tensors, root / "empty-vocab.pth")
    return ["inspect", str(root / "empty-vocab.pth")]


def code_pickle(root: Path, m: Material) -> list[str]:
    return ["inspect", str(pickle_bomb(root / "evil.pth", root / MARKER))]


def code_zip_pickle(root: Path, m: Material) -> list[str]:
    return ["export", str(zip_pickle_bomb(root / "evil.pth", root / MARKER)), "--out", str(root / "out"), "--quiet"]


def code_hf_pickle(root: Path, m: Material) -> list[str]:
    folder = root / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "rwkv"}')
    pickle_bomb(folder / "pytorch_model.bin", root / MARKER)
    return ["inspect", str(folder)]


def _case(name, klass, build, code, message="", **kw) -> Case:
    return Case(name, klass, build, code, message, **kw)


PKG = ("pkg/",)
CASES: list[Case] = [
    # dangerous (issue 14, "Dangerous" 1-4)
    _case("validate-report-md-link", "dangerous", validate_report_link, 2, "report.md: is a symbolic link"),
    _case("validate-folder-link", "dangerous", validate_folder_link, 2, "is a symbolic link"),
    _case("validate-report-dir-user-files", "dangerous", validate_report_dir_with_user_files, 2,
          "not a validation report file"),
    _case("validate-writes-fresh-report", "dangerous", validate_fresh_report, 0, allowed=("pkg/validation",)),
    _case("verify-report-link", "dangerous", verify_report_link, 1, "validation/report.md: is a symbolic link",
          on_stdout=True),
    _case("package-link-in-validation", "dangerous", package_link_in_validation, 1, "is a symbolic link"),
    _case("package-linked-graph", "dangerous", package_linked_graph, 1, "is a symbolic link"),
    _case("package-linked-folder", "dangerous", package_linked_folder, 1, "validation: is a symbolic link"),
    _case("package-output-link", "dangerous", package_output_link, 2, "is a symbolic link"),
    _case("generate-linked-graph", "dangerous", generate_linked_graph, 2, "is a symbolic link"),
    _case("generate-absolute-graph", "dangerous", generate_absolute_graph, 2, "absolute path"),
    _case("generate-dotdot-graph", "dangerous", generate_dotdot_graph, 2, "'..' path component"),
    _case("generate-dotdot-graph-no-verify", "dangerous", generate_dotdot_graph_no_verify, 2, "'..' path component"),
    _case("generate-unlisted-graph", "dangerous", generate_unlisted_graph, 2, "is not listed in files"),
    _case("generate-files-empty-flipped-byte", "dangerous", generate_empty_files_flipped_byte, 2, "not listed in"),
    _case("generate-flipped-byte", "dangerous", generate_flipped_byte, 2, "sha256 does not match"),
    _case("generate-init-file-outside", "dangerous", generate_outside_init_file, 2, "'..' path component"),
    _case("generate-tokenizer-outside", "dangerous", generate_outside_tokenizer, 2, "'..' path component"),
    _case("generate-unlisted-file", "dangerous", generate_unlisted_file, 2, "notes.py: not listed"),
    _case("export-out-is-checkpoint", "dangerous", export_out_is_checkpoint, 2, "is a file"),
    _case("export-out-is-checkpoint-folder", "dangerous", export_out_is_checkpoint_folder, 2, "input"),
    _case("export-out-is-a-file", "dangerous", export_out_is_a_file, 2, "is a file"),
    _case("export-out-is-cwd", "dangerous", export_out_is_cwd, 2, "current directory", cwd="work"),
    _case("export-out-holds-cwd", "dangerous", export_out_holds_cwd, 2, "current directory", cwd="work/sub"),
    _case("export-out-not-a-package", "dangerous", export_out_not_a_package, 2, "not an rwkv-deploy package"),
    _case("export-out-link", "dangerous", export_out_link, 2, "is a symbolic link"),
    _case("export-tokenizer-inside-out", "dangerous", export_tokenizer_inside_out, 2, "input"),
    # memory: declared sizes checked before anything is allocated
    _case("verify-5MiB-manifest", "memory", verify_big_stored_manifest, 1, "larger than 4 MiB", on_stdout=True),
    _case("generate-5MiB-manifest", "memory", generate_big_manifest, 2, "larger than 4 MiB"),
    _case("verify-deflated-64MiB-manifest", "memory", verify_deflated_manifest, 1, "compressed", on_stdout=True),
    _case("generate-deflated-64MiB-manifest", "memory", generate_deflated_manifest, 1, "compressed"),
    _case("verify-deflated-64MiB-index", "memory", verify_deflated_index, 1, "compressed", on_stdout=True),
    _case("generate-npz-declares-40GB", "memory", generate_npz_declares_huge, 2, "expected float32 [4, 16, 16]"),
    _case("verify-npz-declares-40GB", "memory", verify_npz_declares_huge, 1, "expected float32 [4, 16, 16]",
          on_stdout=True),
    _case("inspect-stride-0-checkpoint", "memory", inspect_stride_zero, 2, "expanded or overlapping view"),
    _case("export-stride-0-checkpoint", "memory", export_stride_zero, 2, "expanded or overlapping view"),
    _case("bench-huge-shape", "memory", bench_huge_shape, 2, "plausibility cap"),
    _case("bench-huge-vocab", "memory", bench_huge_vocab, 2, "vocab"),
    _case("generate-manifest-4TiB-state", "memory", generate_manifest_huge_state, 2, "GiB of state per sequence"),
    # non-finite numbers
    _case("generate-nan-logits", "nonfinite", generate_nan_logits, 2, "logits are NaN or infinite"),
    _case("generate-nan-init-file", "nonfinite", generate_nan_init_file, 2, "contains NaN"),
    _case("generate-inf-init-file", "nonfinite", generate_inf_init_file, 2, "contains infinite values"),
    _case("generate-presence-penalty-nan", "nonfinite", generate_option("--presence-penalty", "nan", "--temperature", "1"),
          2, "presence_penalty must be a finite number"),
    _case("generate-frequency-penalty-inf", "nonfinite", generate_option("--frequency-penalty", "inf", "--temperature", "1"),
          2, "frequency_penalty must be a finite number"),
    _case("generate-temperature-1e-40", "nonfinite", generate_option("--temperature", "1e-40", "--seed", "1"), 0),
    _case("generate-temperature-inf", "nonfinite", generate_option("--temperature", "inf"), 2,
          "temperature must be a finite number"),
    _case("generate-top-p-nan", "nonfinite", generate_option("--top-p", "nan"), 2, "top_p must be in"),
    _case("generate-init-nan", "nonfinite", manifest_edit("generate", lambda d: json.dumps(d).replace(
        '"init": 0.0', '"init": NaN', 1)), 2, "not valid JSON"),
    _case("verify-init-nan", "nonfinite", manifest_edit("verify", lambda d: json.dumps(d).replace(
        '"init": 0.0', '"init": NaN', 1)), 1, "not valid JSON", on_stdout=True),
    # manifests that used to escape as tracebacks (generate) or pass verify though unusable
    *[_case(f"{cmd}-{name}", "traceback" if cmd == "generate" else "verify", manifest_edit(cmd, change),
            2 if cmd == "generate" else 1, message, on_stdout=cmd == "verify")
      for cmd in ("generate", "verify")
      for name, change, message in (
          ("files-is-a-list", _set("files", []), "files must be an object"),
          ("manifest-is-a-list", lambda d: [d], "must be an object, not an array"),
          ("manifest-is-null", lambda d: "null", "must be an object, not null"),
          ("dtype-int8", _set("state.0.dtype", "int8"), "state[0].dtype"),
          ("dtype-object", _set("state.0.dtype", "object"), "state[0].dtype"),
          ("init-abc", _set("state.0.init", "abc"), "state[0].init must be a finite number"),
          ("shape-string-dim", _set("state.0.shape", ["batch", "x"]), "state[0].shape[1] must be an integer"),
          ("shape-is-a-number", _set("state.0.shape", 5), "state[0].shape must be an array"),
          ("vocab-string", _set("model.vocab_size", "256"), "model.vocab_size must be an integer"),
          ("vocab-zero", _set("model.vocab_size", 0), "model.vocab_size is 0"),
          ("prefill-bogus", _set("graphs.prefill", 5), "graphs.prefill must be an object"),
          ("deep-nesting", lambda d: '{"a":' * 100000 + "1" + "}" * 100000, "nested 100000 levels"),
          ("format-version-true", _set("format_version", True), "format_version True is not supported"),
          ("format-version-float", _set("format_version", 1.0), "format_version 1.0 is not supported"),
          ("eos-string", _set("tokenizer.eos_token_id", "0"), "tokenizer.eos_token_id must be an integer"),
          ("eos-outside-vocab", _set("tokenizer.eos_token_id", 300), "tokenizer.eos_token_id is 300"),
          ("tokenizer-kind-unknown", _set("tokenizer.kind", "sentencepiece"), "tokenizer.kind is 'sentencepiece'"),
          ("world-tokenizer-256-vocab", _set("tokenizer.kind", "world"), "emits ids up to 65535"),
          ("no-step-graph", lambda d: d["graphs"].pop("step") and None, "graphs has no 'step' graph"),
          ("state-empty", _set("state", []), "state is empty"),
          ("files-bad-hash", lambda d: d["files"].update({k: "xyz" for k in d["files"]}), "lowercase hex sha256"),
          ("state-input-renamed", _set("state.0.input", "evil"), "input/output must be"),
          ("duplicate-keys", lambda d: json.dumps(d)[:-1] + ', "model": {}}', "appears twice"),
          ("not-utf8", lambda d: json.dumps(d).encode().replace(b"rwkv-deploy", b"rwkv-d\xffeploy", 1), "not UTF-8"),
      )],
    _case("generate-archive-encrypted-member", "traceback", generate_archive_flag(flag=1), 1, "encrypted"),
    _case("verify-archive-encrypted-member", "traceback", _archive_flag(flag=1), 1, "encrypted", on_stdout=True),
    _case("generate-archive-unknown-compression", "traceback", generate_archive_flag(method=99), 1, "compressed"),
    _case("verify-archive-unknown-compression", "traceback", _archive_flag(method=99), 1, "compressed",
          on_stdout=True),
    _case("hf-index-not-json", "traceback", hf_folder("{not json"), 2, "not a shard index"),
    _case("hf-index-without-weight-map", "traceback", hf_folder('{"metadata": {}}'), 2, "no weight_map"),
    _case("hf-index-weight-map-list", "traceback", hf_folder('{"weight_map": ["a"]}'), 2, "no weight_map"),
    _case("hf-shard-absolute", "traceback", hf_folder('{"weight_map": {"w": "/etc/hostname"}}'), 2,
          "not a file name inside the folder"),
    _case("hf-shard-dotdot", "traceback", hf_folder('{"weight_map": {"w": "../model.safetensors"}}'), 2,
          "not a file name inside the folder"),
    _case("hf-shard-missing", "traceback", hf_folder('{"weight_map": {"w": "model-1.safetensors"}}'), 2,
          "missing"),
    _case("hf-shard-garbage", "traceback", hf_folder('{"weight_map": {"w": "model-1.safetensors"}}',
                                                     {"model-1.safetensors": b"\x00" * 64}), 2, "safetensors"),
    _case("checkpoint-empty-vocab", "verify", empty_vocab_checkpoint, 2, "emb.weight"),
    _case("prompt-invalid-utf8-argv", "prompt", prompt_bytes_argv, 2, "not valid UTF-8 (byte 0xe9 at offset 3)"),
    _case("prompt-file-invalid-utf8", "prompt", prompt_file_bad_utf8, 2, "not valid UTF-8 (byte 0xff"),
    _case("prompt-stdin-invalid-utf8", "prompt", prompt_stdin_ok, 2, "stdin: the prompt is not valid UTF-8",
          stdin=b"\xff\xfe"),
    _case("prompt-file", "prompt", prompt_file_ok, 0),
    _case("prompt-stdin", "prompt", prompt_stdin_ok, 0, stdin=b"Hello from stdin"),
    _case("prompt-file-missing", "prompt", prompt_missing_file, 2, "cannot read the prompt"),
    _case("prompt-none", "prompt", prompt_none, 2, "exactly one of --prompt"),
    _case("generate-seed-negative", "traceback", generate_option("--seed", "-1", "--temperature", "1"), 2,
          "seed must be a whole number"),
    _case("package-disk-full", "traceback", package_disk_full, 1, "File too large", subprocess_only=True,
          file_size_limit=64 << 10),
    _case("export-disk-full", "traceback", export_disk_full, 1, "File too large", subprocess_only=True,
          file_size_limit=64 << 10, census_only=True),
    *[_case(f"export-opset-{o}", "opset", export_opset(o), 2, f"--opset {o}") for o in ("17", "1", "99", "-1")],
    _case("code-legacy-pickle", "code", code_pickle, 2, "not a plain weights file"),
    _case("code-zip-pickle", "code", code_zip_pickle, 2, "evil.pth"),
    _case("code-hf-pickle", "code", code_hf_pickle, 2, "pytorch_model.bin"),
]
