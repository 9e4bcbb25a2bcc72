"""Is a package (directory or `rwkv-deploy package` archive) exactly what its manifest.json promises?

Runtimes trust manifest.json alone, so every promise in it is checked against what is really there: the
trust boundary's rules (`trust.py`: strict schema, regular files only, every named path listed and hashed,
nothing unlisted), the archive index (PACKAGE.json) and layout, the initial-state arrays, and, with `onnx`
installed, each graph's I/O names, dtypes, shapes, opset and external data. Archives are read in place,
member by member, each small file capped; nothing is extracted. Each problem is one line that starts with
the file it concerns (a path inside the package).
"""

from __future__ import annotations

import importlib.util
import io
import json
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import UnsafePathError

from .manifest import Manifest
from .names import ALIGNMENT, CPU_DIR, INDEX_NAME, MANIFEST_NAME
from .schema import SchemaError, parse_index, parse_json, path_problem
from .state_files import StateError, check_finite, concrete_shape, read_npz
from .trust import DirReader, PackageReader, ZipReader, hash_problem, package_problems

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name length, extra length


class VerifyError(RefusedError):
    """Nothing to verify at the given path (a usage error, not a broken package)."""


def verify_package(path: str | Path) -> list[str]:
    """Every problem with the package directory or archive at `path`, one line each; [] when consistent."""
    path = Path(path)
    if path.is_dir():  # the folder the user named may be a link; nothing inside it may
        return _verify(DirReader(path), archive=False)
    if not path.is_file():
        raise VerifyError(f"{path}: no such package directory or archive")
    try:
        with open(path, "rb") as raw, zipfile.ZipFile(path) as zf:
            layout, unreadable = _archive_layout_problems(zf, raw)
            return layout + _verify(ZipReader(zf, skip=unreadable), archive=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        return [f"{path.name}: not a readable zip archive ({exc})"]


def verify_without_cpu_graphs(directory: str | Path) -> tuple[Manifest | None, list[str]]:
    """(manifest, problems) of the package directory as it is without its CPU graphs: manifest.json's
    `cpu_graphs` section left out, and the files under cpu/ it names unlisted. `build-cpu` replaces them, so a
    corrupt CPU graph, or one made from an earlier step graph, does not stop it; everything else is checked
    as `verify_package` checks it."""
    reader = _WithoutCpuGraphs(DirReader(Path(directory)))
    if reader.manifest_problem:
        return None, [reader.manifest_problem]
    return _checked(reader, archive=False)


class _WithoutCpuGraphs(PackageReader):
    """A package directory's reader that shows manifest.json without `cpu_graphs` and hides the files under cpu/
    that section names (only those: it cannot hide any other file from the checks)."""

    def __init__(self, inner: DirReader) -> None:
        self.inner, self.manifest_problem, self._manifest = inner, "", b""
        hidden: set[str] = set()
        try:
            data = parse_json(inner.read_capped(MANIFEST_NAME), MANIFEST_NAME)
        except (SchemaError, OSError, UnsafePathError) as exc:
            self.manifest_problem = str(exc)
            data = None
        if isinstance(data, dict):
            graphs = data.pop("cpu_graphs", None)
            for entry in (graphs.values() if isinstance(graphs, dict) else []):
                path = entry.get("path") if isinstance(entry, dict) else None
                data_file = entry.get("external_data") if isinstance(entry, dict) else None
                if isinstance(path, str) and path.startswith(f"{CPU_DIR}/"):
                    hidden.add(path)
                    if isinstance(data_file, str):
                        hidden.add(f"{path.rsplit('/', 1)[0]}/{data_file}")
            if isinstance(data.get("files"), dict):
                data["files"] = {k: v for k, v in data["files"].items() if k not in hidden}
            self._manifest = json.dumps(data).encode()
        super().__init__([n for n in inner.names if n not in hidden], inner.problems)

    def open(self, name: str) -> BinaryIO:
        if name == MANIFEST_NAME and self._manifest:
            return io.BytesIO(self._manifest)
        return self.inner.open(name)


def graph_checks_available() -> bool:
    """Whether `verify` also checks the graphs' I/O against the manifest (it needs `onnx`, in `[export]`)."""
    return importlib.util.find_spec("onnx") is not None


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot be a relative path inside a package (absolute, `..`, ...), or None if it can."""
    return path_problem(name)


# -- the checks -----------------------------------------------------------------------------------------


def _verify(reader: PackageReader, archive: bool) -> list[str]:
    return _checked(reader, archive)[1]


def _checked(reader: PackageReader, archive: bool) -> tuple[Manifest | None, list[str]]:
    manifest, problems = package_problems(reader)
    if manifest is not None:
        if graph_checks_available():
            from .graph_checks import graph_problems

            problems += graph_problems(reader, manifest)
        problems += _initial_state_problems(reader, manifest)
    if archive or INDEX_NAME in reader.names:
        problems += _index_problems(reader)
    return manifest, problems


def _initial_state_problems(reader: PackageReader, manifest: Manifest) -> list[str]:
    """Each `init_file` array exists with the state's per-sequence shape and dtype (no batch axis), finite;
    shapes are checked before any array is read."""
    problems, wanted_by_file = [], {}
    for entry in manifest.state:
        if entry.init_file and entry.init_file in reader.names:  # else reported as missing
            wanted_by_file.setdefault(entry.init_file, {})[entry.name] = (concrete_shape(entry, 1)[1:], entry.dtype)
    for name, wanted in wanted_by_file.items():
        try:
            with reader.open(name) as f:
                arrays = read_npz(f, wanted, name)
            for state_name in wanted:
                if state_name not in arrays:
                    problems.append(f"{name}: has no array {state_name!r} (state {state_name!r} init_file)")
                else:
                    check_finite(arrays[state_name], f"{name}: array {state_name!r}")
        except StateError as exc:
            problems.append(str(exc))
        except (OSError, zipfile.BadZipFile, UnsafePathError, NotImplementedError, RuntimeError) as exc:
            problems.append(f"{name}: unreadable ({exc})")
    return problems


def _index_problems(reader: PackageReader) -> list[str]:
    if INDEX_NAME not in reader.names:
        return [f"{INDEX_NAME}: missing (an archive lists and hashes every member there)"]
    try:
        members = parse_index(reader.read_capped(INDEX_NAME))
    except SchemaError as exc:
        return [str(exc)]
    except (OSError, zipfile.BadZipFile, UnsafePathError, NotImplementedError, RuntimeError) as exc:
        return [f"{INDEX_NAME}: unreadable ({exc})"]
    problems = [p for name, (sha256, size) in members.items()
                if (p := hash_problem(reader, name, sha256, size, INDEX_NAME))]
    problems += [f"{name}: not listed in {INDEX_NAME}" for name in reader.names
                 if name != INDEX_NAME and name not in members]
    return problems


def _archive_layout_problems(zf: zipfile.ZipFile, raw: BinaryIO) -> tuple[list[str], set[str]]:
    """(problems, members not to read): safe names, no duplicates or links, plain stored members at aligned
    offsets, each member's bytes its own (docs/manifest.md, archive). Encrypted or compressed members are
    never opened afterwards."""
    problems, seen, unreadable, spans = [], set(), set(), []
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
        if info.flag_bits & 0x1:
            problems.append(f"{name}: encrypted; members must be plain")
            unreadable.add(name)
        elif info.compress_type != zipfile.ZIP_STORED:
            problems.append(f"{name}: compressed; members must be stored so runtimes can read them in place")
            unreadable.add(name)
        elif (offset := _data_offset(raw, info)) is None:
            problems.append(f"{name}: bad local file header")
        elif offset % ALIGNMENT:
            problems.append(f"{name}: data starts at offset {offset}, not a multiple of {ALIGNMENT}")
        else:
            spans.append((info.header_offset, offset + info.compress_size, name))
    problems += _overlap_problems(spans, getattr(zf, "start_dir", None), unreadable)
    return problems, unreadable


def _overlap_problems(spans: list[tuple[int, int, str]], central: int | None, unreadable: set[str]) -> list[str]:
    """Members whose bytes (local header to end of data) overlap another member's or the central directory: a
    few MB of archive could otherwise list the same payload under many names and extract to gigabytes."""
    problems, end, previous = [], 0, ""
    for start, stop, name in sorted(spans):
        if start < end:
            problems.append(f"{name}: its bytes overlap those of {previous}; every member must be stored apart")
            unreadable.add(name)
        elif central is not None and stop > central:
            problems.append(f"{name}: its data runs into the archive's central directory")
            unreadable.add(name)
        if stop > end:
            end, previous = stop, name
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
