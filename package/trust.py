"""The one trust boundary of a package: nothing in a package directory or archive is used before it passes here.

A package is untrusted input (something people download and run). Before any runtime, `verify`, the archive
writer and extractor, the Triton writer or the TensorRT builder uses one:

1. manifest.json is read capped and parsed by the strict schema (`schema.py`): types, ranges, sizes;
2. the package holds regular files only: a symbolic link, fifo or device anywhere in it (validation/
   included) is refused, and files are opened with O_NOFOLLOW;
3. every path the manifest names (graphs, external data, tokenizer files, init_file, engines, CPU graphs) is a safe
   relative path, listed in `files` with its sha256, and present;
4. `files` lists every file of the package outside `validation/` (besides manifest.json and PACKAGE.json);
5. every listed file's sha256 is checked, unless the caller skips hashing (`--no-verify` on a trusted local
   package): the path rules 1-4 are never skipped.

`verify` reports every problem, one line each; `open_package_dir` (runtimes, writers) raises PackageError
with the first one. Checks that need more than the manifest (graph I/O with onnx, initial-state arrays, the
archive index and layout) live in `verify.py`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rwkv_deploy import limits
from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import UnsafePathError, open_regular_file

from .manifest import Manifest, ManifestError, external_data_path
from .names import INDEX_NAME, MANIFEST_NAME, VALIDATION_DIR
from .schema import SchemaError, manifest_from_json, parse_json, path_problem, read_capped

_CHUNK = 1 << 20


class PackageError(RefusedError):
    """A package that cannot be used: a file missing, changed, unlisted, a link, or an unsafe path."""


class PackageFilesChanged(PackageError):
    """The first problem is a listed file that is missing or no longer has its recorded sha256."""


# -- reading a package, directory or archive alike ------------------------------------------------------


class PackageReader:
    """Files of a package by relative posix name, with each file's (sha256, size) computed at most once.

    `names` are the regular files only; `problems` are what the listing itself found wrong (links,
    special files), one line each."""

    def __init__(self, names: list[str], problems: list[str] | None = None) -> None:
        self.names = names
        self.problems = problems or []
        self._digests: dict[str, tuple[str, int]] = {}

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read_capped(self, name: str, limit: int = limits.JSON_BYTES) -> bytes:
        """At most `limit` bytes of a small file (a JSON file); SchemaError when it is larger."""
        with self.open(name) as f:
            return read_capped(f, name, limit)

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


class DirReader(PackageReader):
    """A package directory, listed without following links; links and special files are problems."""

    def __init__(self, root: Path) -> None:
        names, problems = scan_directory(root)
        super().__init__(names, problems)
        self.root = root

    def open(self, name: str) -> BinaryIO:
        return open_regular_file(self.root / name)


class ZipReader(PackageReader):
    """An archive read in place. Members in `skip` (encrypted or compressed: reported by the layout check)
    are never opened, so a deflate bomb is never inflated."""

    def __init__(self, zf: zipfile.ZipFile, skip: set[str] = frozenset()) -> None:
        super().__init__([i.filename for i in zf.infolist() if not i.is_dir()])
        self.zf = zf
        self.skip = skip

    def open(self, name: str) -> BinaryIO:
        if name in self.skip:
            raise OSError("a compressed or encrypted member: not read")
        return self.zf.open(name)  # type: ignore[return-value]


MAX_FOLDER_DEPTH = 32


def scan_directory(root: Path) -> tuple[list[str], list[str]]:
    """(regular files as relative posix names, problems): links (to files or folders) and special files
    are never followed or listed, only reported."""
    names, problems = [], []
    for folder, dirs, files in os.walk(root, onerror=lambda exc: problems.append(f"{exc.filename}: unreadable "
                                                                                f"({exc.strerror})")):
        base = Path(folder)
        if dirs and len(base.relative_to(root).parts) >= MAX_FOLDER_DEPTH:  # os.walk recurses: bound it
            problems.append(f"{base.relative_to(root).as_posix()}: folders nested deeper than {MAX_FOLDER_DEPTH} "
                            "levels (a package needs 2)")
            dirs[:] = []
        for name in sorted(dirs):
            if os.path.islink(base / name):
                problems.append(f"{(base / name).relative_to(root).as_posix()}: is a symbolic link (a package "
                                "holds regular files and folders only)")
        dirs[:] = sorted(d for d in dirs if not os.path.islink(base / d))
        for name in sorted(files):
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                names.append(rel)
            elif stat.S_ISLNK(mode):
                problems.append(f"{rel}: is a symbolic link (a package holds regular files and folders only)")
            else:
                problems.append(f"{rel}: is not a regular file (a package holds regular files and folders only)")
    return sorted(names), problems


# -- the checks ---------------------------------------------------------------------------------------------


def read_package_manifest(reader: PackageReader) -> tuple[Manifest, list[tuple[str, str]]]:
    """(manifest, (field, path) of each file its `engines` section names) of the package `reader` lists,
    through the schema; ManifestError otherwise."""
    if MANIFEST_NAME not in reader.names:
        raise ManifestError(f"{MANIFEST_NAME}: missing (not an rwkv-deploy package)")
    try:
        data = reader.read_capped(MANIFEST_NAME)
    except (OSError, zipfile.BadZipFile, UnsafePathError, NotImplementedError, RuntimeError) as exc:
        raise ManifestError(f"{MANIFEST_NAME}: unreadable ({exc})") from None
    manifest = manifest_from_json(parse_json(data, MANIFEST_NAME), MANIFEST_NAME)
    return manifest, [(f"engines.{graph}.{key}", getattr(engine, key)) for graph, engine in manifest.engines.items()
                      for key in ("plan", "info")]


def referenced_files(manifest: Manifest, engines: list[tuple[str, str]] = ()) -> Iterator[tuple[str, str]]:
    """(field, file) for every file the manifest points a runtime to (`engines`: from `read_package_manifest`)."""
    for key, graph in manifest.graphs.items():
        yield f"graphs.{key}.path", graph.path
        if graph.external_data:
            yield f"graphs.{key}.external_data", external_data_path(graph.path, graph.external_data)
    for name in manifest.tokenizer.files:
        yield "tokenizer.files", name
    for entry in manifest.state:
        if entry.init_file:
            yield f"state {entry.name!r} init_file", entry.init_file
    for key, cpu in manifest.cpu_graphs.items():
        yield f"cpu_graphs.{key}.path", cpu.path
        yield f"cpu_graphs.{key}.external_data", external_data_path(cpu.path, cpu.external_data)
    yield from engines


def hash_problem(reader: PackageReader, name: str, sha256: str, size: int | None, listed_in: str) -> str | None:
    if name not in reader.names:
        return f"{name}: listed in {listed_in} but missing"
    try:
        got_sha, got_size = reader.digest(name)
    except (OSError, zipfile.BadZipFile, UnsafePathError, NotImplementedError, RuntimeError) as exc:
        return f"{name}: unreadable ({exc})"
    if size is not None and got_size != size:
        return f"{name}: {got_size} bytes but {listed_in} says {size}"
    if got_sha != sha256:
        return f"{name}: sha256 does not match {listed_in} (file changed or corrupt)"
    return None


def listed_file_problems(reader: PackageReader, manifest: Manifest, hashes: bool = True) -> list[str]:
    """Every `files` entry present (and, with `hashes`, with its sha256)."""
    problems = []
    for name, sha256 in manifest.files.items():
        if not hashes:
            if name not in reader.names:
                problems.append(f"{name}: listed in {MANIFEST_NAME} but missing")
        elif problem := hash_problem(reader, name, sha256, None, MANIFEST_NAME):
            problems.append(problem)
    return problems


def unlisted_file_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    known = set(manifest.files) | {MANIFEST_NAME, INDEX_NAME}
    return [f"{name}: not listed in {MANIFEST_NAME} files (unexpected file in the package)"
            for name in reader.names if name not in known and not name.startswith(VALIDATION_DIR)]


def reference_problems(reader: PackageReader, manifest: Manifest, engines: list[tuple[str, str]] = ()) -> list[str]:
    """Files the manifest points to are safe relative paths, listed in `files` (hashed) and present."""
    problems = []
    for field, name in referenced_files(manifest, engines):
        if bad := path_problem(name):
            problems.append(f"{MANIFEST_NAME}: {field} {name!r} is not a safe relative path ({bad})")
        elif name not in manifest.files:
            problems.append(f"{MANIFEST_NAME}: {field} {name!r} is not listed in files (its hash cannot be checked)")
            if name not in reader.names:
                problems.append(f"{name}: named by {MANIFEST_NAME} {field} but missing")
    return problems


def package_problems(reader: PackageReader, hashes: bool = True) -> tuple[Manifest | None, list[str]]:
    """(manifest or None, problems): everything the trust boundary checks (module docstring, 1-5)."""
    problems = list(reader.problems)
    try:
        manifest, engines = read_package_manifest(reader)
    except ManifestError as exc:
        return None, problems + [str(exc)]
    problems += reference_problems(reader, manifest, engines)
    problems += listed_file_problems(reader, manifest, hashes)
    problems += unlisted_file_problems(reader, manifest)
    return manifest, problems


def open_package_dir(directory: str | os.PathLike, hashes: bool = True) -> Manifest:
    """The manifest of the package directory `directory` once it passed the trust boundary; PackageError
    (or ManifestError) with the first problem, the file named with the directory, otherwise."""
    directory = Path(directory)  # the folder the user named may be a link; nothing inside it may be one
    if not directory.is_dir():
        raise PackageError(f"{directory}: no such package directory")
    reader = DirReader(directory)
    if MANIFEST_NAME not in reader.names and not (directory / MANIFEST_NAME).exists():
        raise ManifestError(f"{directory / MANIFEST_NAME}: no manifest.json (is {directory} an rwkv-deploy "
                            "package?)")
    manifest, problems = package_problems(reader, hashes)
    if problems:
        more = f" (and {len(problems) - 1} more; run `rwkv-deploy verify {directory}`)" if len(problems) > 1 else ""
        changed = any(why in problems[0] for why in (f"listed in {MANIFEST_NAME} but missing", "sha256 does not match"))
        error = SchemaError if manifest is None else PackageFilesChanged if changed else PackageError
        raise error(f"{directory / problems[0]}{more}")
    return manifest


__all__ = ["DirReader", "PackageError", "PackageReader", "ZipReader", "hash_problem", "listed_file_problems",
           "open_package_dir", "package_problems", "read_package_manifest", "reference_problems",
           "referenced_files", "scan_directory", "unlisted_file_problems"]
