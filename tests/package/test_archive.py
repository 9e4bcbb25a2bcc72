"""`rwkv-deploy package`: one reproducible, verified zip per package; `extract_package` for runtimes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package import archive as archive_module
from rwkv_deploy.package.archive import ArchiveError, ArchiveTargetError, create_archive, extract_package
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.package.names import ALIGNMENT, INDEX_NAME
from rwkv_deploy.package.verify import verify_package
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
VALIDATION = {"validation/report.json": b'{"ok": true}\n', "validation/report.md": b"# ok\n",
              "validation/report.png": b"\x89PNG\r\n\x1a\nfake"}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (v7, 2 layers, byte tokenizer) with a validation report; tests must not modify it."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = root / "tiny.pth"
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=0), checkpoint)
    export_package(checkpoint, root / "tiny", ExportOptions())
    for name, data in VALIDATION.items():
        (root / "tiny" / name).parent.mkdir(exist_ok=True)
        (root / "tiny" / name).write_bytes(data)
    return root / "tiny"


@pytest.fixture
def package_copy(package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package, tmp_path / "pkg"))


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def graph_name(package: Path) -> str:
    return json.loads((package / "manifest.json").read_text())["graphs"]["step"]["path"]


def add_listed_file(package: Path, name: str, data: bytes) -> None:
    """Add a file and list it in manifest.json `files`, as the exporter would have."""
    (package / name).parent.mkdir(parents=True, exist_ok=True)
    (package / name).write_bytes(data)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_package_then_verify_passes(package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    members = create_archive(package, archive)
    assert verify_package(archive) == []
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert names == [INDEX_NAME, "manifest.json", *sorted(n for n in files_under(package) if n != "manifest.json")]
    assert {graph_name(package), *VALIDATION} <= set(names)
    assert [m.name for m in members] == names[1:]


def test_archive_layout_is_stored_aligned_and_indexed(package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    create_archive(package, archive)
    raw = archive.read_bytes()
    originals = files_under(package)
    with zipfile.ZipFile(archive) as zf:
        index = json.loads(zf.read(INDEX_NAME))
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:][:2], "little"), \
                int.from_bytes(raw[info.header_offset + 28:][:2], "little")
            data_offset = info.header_offset + 30 + name_len + extra_len
            assert data_offset % ALIGNMENT == 0, info.filename
            if info.filename != INDEX_NAME:  # readable in place, straight from the archive's bytes
                assert raw[data_offset:data_offset + info.file_size] == originals[info.filename]
    assert index["format"] == "rwkv-deploy-archive" and index["created_by"]["name"] == "rwkv-deploy"
    assert index["members"] == {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                for name, data in originals.items()}


def test_same_directory_gives_byte_identical_archives(package: Path, package_copy: Path, tmp_path: Path) -> None:
    create_archive(package, tmp_path / "first.zip")
    for path in package_copy.rglob("*"):  # other mtimes, another directory name: same archive
        os.utime(path, (1_700_000_000, 1_700_000_000))
    create_archive(package_copy, tmp_path / "second.zip")
    assert (tmp_path / "first.zip").read_bytes() == (tmp_path / "second.zip").read_bytes()


def test_nested_tokenizer_and_initial_state_files_are_packaged(package_copy: Path, tmp_path: Path) -> None:
    add_listed_file(package_copy, "tokenizer/vocab.txt", b"a b c\n")
    state = io.BytesIO()
    np.savez(state, unused=np.zeros(3, np.float32))
    add_listed_file(package_copy, "initial_state.npz", state.getvalue())
    create_archive(package_copy, tmp_path / "tiny.zip")
    with zipfile.ZipFile(tmp_path / "tiny.zip") as zf:
        assert zf.read("tokenizer/vocab.txt") == b"a b c\n"
        assert zf.read("initial_state.npz") == (package_copy / "initial_state.npz").read_bytes()


def test_existing_output_needs_force(package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(b"precious")
    with pytest.raises(ArchiveTargetError, match="--force"):
        create_archive(package, archive)
    assert archive.read_bytes() == b"precious"
    create_archive(package, archive, force=True)
    assert verify_package(archive) == []
    assert sorted(os.listdir(tmp_path)) == ["tiny.zip"]


def test_broken_package_is_refused_and_nothing_is_left_behind(package_copy: Path, tmp_path: Path) -> None:
    (package_copy / "stray.txt").write_text("not listed")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ArchiveError, match="stray.txt"):
        create_archive(package_copy, out_dir / "tiny.zip")
    assert os.listdir(out_dir) == []


def test_file_changing_while_packaging_removes_the_temporary_file(
        package_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = package_copy / graph_name(package_copy)
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")  # as if changed after the verification
    monkeypatch.setattr(archive_module, "verify_package", lambda path: [])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ArchiveError, match="changed while it was being packaged"):
        create_archive(package_copy, out_dir / "tiny.zip")
    assert os.listdir(out_dir) == []


def test_output_inside_the_package_is_refused(package_copy: Path) -> None:
    with pytest.raises(ArchiveTargetError, match="inside the package"):
        create_archive(package_copy, package_copy / "self.zip")
    assert not (package_copy / "self.zip").exists()


def test_extract_round_trip(package: Path, tmp_path: Path) -> None:
    create_archive(package, tmp_path / "tiny.zip")
    dest = extract_package(tmp_path / "tiny.zip", tmp_path / "deployed" / "tiny")
    assert files_under(dest) == files_under(package)  # the package directory, without the archive's index
    assert verify_package(dest) == []
    create_archive(dest, tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == (tmp_path / "tiny.zip").read_bytes()


@pytest.mark.parametrize("evil", ["../evil.txt", "TMP/evil-absolute.txt", "tokenizer/../../evil.txt"])
def test_extract_rejects_path_traversal(package: Path, tmp_path: Path, evil: str) -> None:
    evil = evil.replace("TMP", str(tmp_path))
    create_archive(package, tmp_path / "tiny.zip")
    with zipfile.ZipFile(tmp_path / "tiny.zip", "a") as zf:
        zf.writestr(evil, b"owned")
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(ArchiveError, match="unsafe member name"):
        extract_package(tmp_path / "tiny.zip", dest)
    assert not (tmp_path / "a").exists()
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*"))


def test_extract_refuses_a_tampered_archive(package: Path, tmp_path: Path) -> None:
    create_archive(package, tmp_path / "tiny.zip")
    with zipfile.ZipFile(tmp_path / "tiny.zip") as zin, zipfile.ZipFile(tmp_path / "bad.zip", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data.replace(b'"ok"', b'"no"') if info.filename == "validation/report.json" else data)
    with pytest.raises(ArchiveError, match="validation/report.json: sha256 does not match PACKAGE.json"):
        extract_package(tmp_path / "bad.zip", tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["bad.zip", "tiny.zip"]


def test_cli_package(package: Path, package_copy: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    result = runner.invoke(app, ["package", str(package), "-o", str(archive)])
    assert result.exit_code == 0, result.output
    assert f"wrote {archive}" in result.stdout
    again = runner.invoke(app, ["package", str(package), "-o", str(archive)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert runner.invoke(app, ["package", str(package), "-o", str(archive), "--force"]).exit_code == 0
    (package_copy / "manifest.json").write_text("{")
    broken = runner.invoke(app, ["package", str(package_copy), "-o", str(tmp_path / "broken.zip")])
    assert broken.exit_code == 1 and "manifest.json: not valid JSON" in broken.stderr
    assert not (tmp_path / "broken.zip").exists()
    assert runner.invoke(app, ["package", str(tmp_path / "nope"), "-o", str(archive)]).exit_code == 2


def test_members_whose_bytes_overlap_are_refused(package: Path, tmp_path: Path) -> None:
    """Two central-directory entries pointing into the same bytes (the trick of overlapping-member zip bombs,
    where a few MB extract to gigabytes): verify names the overlap and extraction writes nothing."""
    create_archive(package, tmp_path / "tiny.zip")
    data = bytearray((tmp_path / "tiny.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "tiny.zip") as zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        first, victim = members[0], members[1]
    central = data.index(b"PK\x01\x02")
    while data[central:central + 4] == b"PK\x01\x02":  # point the victim's entry at the first member's header
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, central + 28)
        if data[central + 46:central + 46 + name_len].decode() == victim.filename:
            struct.pack_into("<I", data, central + 42, first.header_offset)
        central += 46 + name_len + extra_len + comment_len
    (tmp_path / "bomb.zip").write_bytes(bytes(data))
    problems = verify_package(tmp_path / "bomb.zip")
    assert f"{victim.filename}: its bytes overlap those of {first.filename}; every member must be stored apart" \
        in problems
    with pytest.raises(ArchiveError, match="overlap"):
        extract_package(tmp_path / "bomb.zip", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert verify_package(tmp_path / "tiny.zip") == []  # the honest archive has no overlap


def test_a_second_run_writing_the_same_archive_is_refused(package: Path, tmp_path: Path) -> None:
    from rwkv_deploy.staging import target_lock

    archive = tmp_path / "tiny.zip"
    with target_lock(archive):  # another run is writing it
        result = runner.invoke(app, ["package", str(package), "-o", str(archive)])
    assert result.exit_code == 2 and "another rwkv-deploy run" in result.output
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, the lock file gone with its holder


KILLED_READER = """
import os, signal, sys
from rwkv_deploy.runtime.package import package_directory
with package_directory(sys.argv[1]) as folder:
    print(folder, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_generate_extracted_is_removed_by_the_next_run(package: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import tempfile

    from rwkv_deploy.runtime.package import package_directory

    create_archive(package, tmp_path / "tiny.zip")
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = subprocess.run([sys.executable, "-c", KILLED_READER, str(tmp_path / "tiny.zip")], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == -9
    left = Path(done.stdout.strip()).parent
    assert left.is_dir() and left.parent == temp
    theirs = temp / "rwkv-deploy-package-999999999-abc"  # same name pattern, no marker: not ours
    theirs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with package_directory(tmp_path / "tiny.zip") as folder:
        assert (folder / "manifest.json").is_file()
        assert not left.exists() and theirs.is_dir()
    assert sorted(p.name for p in temp.iterdir()) == [theirs.name]
