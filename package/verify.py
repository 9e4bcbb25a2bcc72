"""Is a package (directory or `rwkv-deploy package` archive) exactly what its manifest.json promises?

Runtimes trust manifest.json alone, so every promise in it is checked against what is really there:
file hashes, no stray files, the archive index (PACKAGE.json), and the step graph's I/O names, dtypes,
shapes, opset and external data. Archives are read in place, member by member; nothing is extracted.
Each problem is one line that starts with the file it concerns (a path inside the package).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from rwkv_deploy.errors import RwkvDeployError

from .manifest import Manifest, external_data_path, shape_text
from .names import (ALIGNMENT, BATCH_AXIS, FORMAT_VERSION, INDEX_FORMAT, INDEX_FORMAT_VERSION, INDEX_NAME,
                    MANIFEST_NAME, STEP_GRAPH, VALIDATION_DIR)
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name length, extra length


class VerifyError(RwkvDeployError):
    """Nothing to verify at the given path (a usage error, not a broken package)."""

    exit_code = 2


def verify_package(path: str | Path) -> list[str]:
    """Every problem with the package directory or archive at `path`, one line each; [] when consistent."""
    path = Path(path)
    if path.is_dir():
        return _verify(_DirReader(path), archive=False)
    if not path.is_file():
        raise VerifyError(f"{path}: no such package directory or archive")
    try:
        with open(path, "rb") as raw, zipfile.ZipFile(path) as zf:
            return _archive_layout_problems(zf, raw) + _verify(_ZipReader(zf), archive=True)
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"{path.name}: not a readable zip archive ({exc})"]


def graph_checks_available() -> bool:
    """Whether `verify` also checks the graphs' I/O against the manifest (it needs `onnx`, in `[export]`)."""
    return importlib.util.find_spec("onnx") is not None


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot be a relative path inside a package (absolute, `..`, ...), or None if it can."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name or "\0" in name:
        return "backslash or NUL in the path"
    if any(part in ("", ".", "..") for part in name.removesuffix("/").split("/")):
        return "empty, '.' or '..' path component"
    return None


# -- reading a package, directory or archive alike ------------------------------------------------------


class PackageReader:
    """Files of a package by relative posix name, with each file's (sha256, size) computed at most once."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._digests: dict[str, tuple[str, int]] = {}

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def digest(self, name: str) -> tuple[str, int]:
        """(sha256 hex, size); raises OSError / zipfile.BadZipFile when the file cannot be read."""
        if name not in self._digests:
            h, size = hashlib.sha256(), 0
            with self.open(name) as f:
                while block := f.read(_CHUNK):
                    h.update(block)
                    size += len(block)
            self._digests[name] = (h.hexdigest(), size)
        return self._digests[name]


class _DirReader(PackageReader):
    def __init__(self, root: Path) -> None:
        super().__init__(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")


class _ZipReader(PackageReader):
    def __init__(self, zf: zipfile.ZipFile) -> None:
        super().__init__([i.filename for i in zf.infolist() if not i.is_dir()])
        self.zf = zf

    def open(self, name: str) -> BinaryIO:
        return self.zf.open(name)  # type: ignore[return-value]


# -- the checks -----------------------------------------------------------------------------------------


def _verify(reader: PackageReader, archive: bool) -> list[str]:
    manifest, problems = _read_manifest(reader)
    if manifest is not None:
        problems += _listed_file_problems(reader, manifest)
        problems += _unlisted_file_problems(reader, manifest)
        problems += _reference_problems(reader, manifest)
        if graph_checks_available():
            from .graph_checks import graph_problems

            problems += graph_problems(reader, manifest)
        problems += _initial_state_problems(reader, manifest)
    if archive or INDEX_NAME in reader.names:
        problems += _index_problems(reader)
    return problems


def _read_manifest(reader: PackageReader) -> tuple[Manifest | None, list[str]]:
    if MANIFEST_NAME not in reader.names:
        return None, [f"{MANIFEST_NAME}: missing (not an rwkv-deploy package)"]
    try:
        data = json.loads(reader.read(MANIFEST_NAME))
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            return None, [f"{MANIFEST_NAME}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"]
        return Manifest.from_dict(data), []
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return None, [f"{MANIFEST_NAME}: unreadable ({exc})"]
    except (KeyError, TypeError, AttributeError) as exc:
        return None, [f"{MANIFEST_NAME}: malformed ({type(exc).__name__}: {exc})"]


def _hash_problem(reader: PackageReader, name: str, sha256: str, size: int | None, listed_in: str) -> str | None:
    if name not in reader.names:
        return f"{name}: listed in {listed_in} but missing"
    try:
        got_sha, got_size = reader.digest(name)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{name}: unreadable ({exc})"
    if size is not None and got_size != size:
        return f"{name}: {got_size} bytes but {listed_in} says {size}"
    if got_sha != sha256:
        return f"{name}: sha256 does not match {listed_in} (file changed or corrupt)"
    return None


def _listed_file_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    problems = []
    for name, sha256 in manifest.files.items():
        if bad := member_name_problem(name):
            problems.append(f"{MANIFEST_NAME}: files entry {name!r} is not a safe relative path ({bad})")
        elif problem := _hash_problem(reader, name, sha256, None, MANIFEST_NAME):
            problems.append(problem)
    return problems


def _unlisted_file_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    known = set(manifest.files) | {MANIFEST_NAME, INDEX_NAME}
    return [f"{name}: not listed in {MANIFEST_NAME} files (unexpected file in the package)"
            for name in reader.names if name not in known and not name.startswith(VALIDATION_DIR)]


def _referenced_files(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(field, file) for every file the manifest points a runtime to."""
    for key, graph in manifest.graphs.items():
        yield f"graphs.{key}.path", graph.path
        if graph.external_data:
            yield f"graphs.{key}.external_data", external_data_path(graph.path, graph.external_data)
    for name in manifest.tokenizer.files:
        yield "tokenizer.files", name
    for entry in manifest.state:
        if entry.init_file:
            yield f"state {entry.name!r} init_file", entry.init_file
    for graph, engine in manifest.engines.items():
        yield f"engines.{graph}.plan", engine.plan
        yield f"engines.{graph}.info", engine.info


def _reference_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    """Files the manifest points to must be listed in `files` (hashed) and present; the state must be batched."""
    problems = [] if STEP_GRAPH in manifest.graphs else [f"{MANIFEST_NAME}: graphs has no {STEP_GRAPH!r} graph"]
    problems += [f"{MANIFEST_NAME}: engines has an engine of {graph!r}, which is not in graphs"
                 for graph in manifest.engines if graph not in manifest.graphs]
    for field, name in _referenced_files(manifest):
        if name not in manifest.files:
            problems.append(f"{MANIFEST_NAME}: {field} {name!r} is not listed in files (its hash cannot be checked)")
            if name not in reader.names:
                problems.append(f"{name}: named by {MANIFEST_NAME} {field} but missing")
    for entry in manifest.state:
        if not entry.shape or entry.shape[0] != BATCH_AXIS or not all(
                isinstance(d, int) and d > 0 for d in entry.shape[1:]):
            problems.append(f"{MANIFEST_NAME}: state {entry.name!r} shape {shape_text(entry.shape)} must be "
                            f"[{BATCH_AXIS}, positive ints...]")
    return problems


def _initial_state_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    """Each `init_file` array exists with the state's per-sequence shape and dtype (no batch axis)."""
    problems, cache = [], {}
    for entry in manifest.state:
        name = entry.init_file
        if not name or name not in reader.names:
            continue  # no file to read, or reported as missing
        try:
            if name not in cache:
                cache[name] = np.load(io.BytesIO(reader.read(name)), allow_pickle=False)
            arrays = cache[name]
            if entry.name not in arrays.files:
                problems.append(f"{name}: has no array {entry.name!r} (state {entry.name!r} init_file)")
                continue
            array = arrays[entry.name]
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            problems.append(f"{name}: unreadable .npz ({exc})")
            continue
        want = list(entry.shape[1:])
        if list(array.shape) != want or array.dtype.name != entry.dtype:
            problems.append(f"{name}: array {entry.name!r} is {array.dtype.name} {shape_text(list(array.shape))}, "
                            f"expected {entry.dtype} {shape_text(want)}")
    return problems


def _index_problems(reader: PackageReader) -> list[str]:
    if INDEX_NAME not in reader.names:
        return [f"{INDEX_NAME}: missing (an archive lists and hashes every member there)"]
    try:
        index = json.loads(reader.read(INDEX_NAME))
        if (index.get("format"), index.get("format_version")) != (INDEX_FORMAT, INDEX_FORMAT_VERSION):
            return [f"{INDEX_NAME}: not a {INDEX_FORMAT} version {INDEX_FORMAT_VERSION} index"]
        members = {name: (entry["sha256"], int(entry["size"])) for name, entry in index["members"].items()}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return [f"{INDEX_NAME}: unreadable ({exc})"]
    except (KeyError, TypeError, AttributeError) as exc:
        return [f"{INDEX_NAME}: malformed ({type(exc).__name__}: {exc})"]
    problems = [p for name, (sha256, size) in members.items()
                if (p := _hash_problem(reader, name, sha256, size, INDEX_NAME))]
    problems += [f"{name}: not listed in {INDEX_NAME}" for name in reader.names
                 if name != INDEX_NAME and name not in members]
    return problems


def _archive_layout_problems(zf: zipfile.ZipFile, raw: BinaryIO) -> list[str]:
    """Safe names, no duplicates or links, stored members at aligned offsets (docs/manifest.md, archive)."""
    problems, seen = [], set()
    for info in zf.infolist():
        name = info.filename
        if bad := member_name_problem(name):
            problems.append(f"{name}: unsafe member name ({bad})")
        if name in seen:
            problems.append(f"{name}: appears twice in the archive")
        seen.add(name)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{name}: is a symbolic link")
        if info.compress_type != zipfile.ZIP_STORED:
            problems.append(f"{name}: compressed; members must be stored so runtimes can read them in place")
        elif (offset := _data_offset(raw, info)) is None:
            problems.append(f"{name}: bad local file header")
        elif offset % ALIGNMENT:
            problems.append(f"{name}: data starts at offset {offset}, not a multiple of {ALIGNMENT}")
    return problems


def _data_offset(raw: BinaryIO, info: zipfile.ZipInfo) -> int | None:
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        return None
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        return None
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
