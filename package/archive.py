"""One file per package: a deterministic zip archive of a verified package directory, and safe extraction.

Why a zip whose members are stored (not compressed), each at a 64-byte-aligned offset:
- ONNX weights are float data that compress by a few percent at best; compressing only costs time.
- A zip ends with a central directory, so any member is found and read at random, in place: `verify`,
  runtimes and browsers read manifest.json or one graph without extracting or scanning the archive
  (tar has no index; tar.gz / tar.zst add whole-stream decompression for no real size gain).
- Every platform reads zip: Python's zipfile, libzip/minizip in C++, JSZip/fflate or a DataView in
  Node.js and browsers, `unzip` on the command line, `Expand-Archive` on Windows.
- Stored + aligned (padding in an extra field of the local header, as Android's zipalign does): a runtime
  can mmap the archive and hand a member's bytes to ONNX Runtime, or view them as a Float32Array, with no copy.

Reproducibility: members in a fixed order (PACKAGE.json, manifest.json, then the rest sorted by path),
the fixed timestamp 1980-01-01 00:00, fixed permissions 0644, no directory entries, no archive comment,
and an index with no wall-clock time or host data, so the same directory always gives byte-identical
archives (content-addressed caches, reproducible release artifacts).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rwkv_deploy import __version__
from rwkv_deploy.errors import RefusedError, RwkvDeployError
from rwkv_deploy.fileio import UnsafePathError, is_link, open_regular_file, write_atomically
from rwkv_deploy.staging import staged_directory, target_lock

from .names import ALIGNMENT, INDEX_FORMAT, INDEX_FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME
from .schema import parse_index, read_capped
from .trust import DirReader, read_package_manifest
from .verify import verify_package

FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can record
_ALIGN_EXTRA_ID = 0xD935  # zipalign's extra field: 2-byte alignment, then zero padding
_LOCAL_HEADER_SIZE = 30
_ZIP64_LOCAL_EXTRA_SIZE = 20
_CHUNK = 1 << 20


class ArchiveError(RwkvDeployError):
    """The package or archive is broken: nothing was written."""

    exit_code = 1


class ArchiveTargetError(RefusedError):
    """Bad paths: the output exists, is inside the package, or the input is not there."""


@dataclass(frozen=True)
class ArchiveMember:
    name: str
    size: int
    sha256: str


def create_archive(package_dir: str | Path, archive: str | Path, force: bool = False) -> list[ArchiveMember]:
    """Write the verified package in `package_dir` to the zip `archive` atomically; returns its members
    (PACKAGE.json excluded). Refuses a package that fails `verify_package`, and an existing `archive`
    unless `force`."""
    package_dir, archive = Path(package_dir), Path(archive)
    _check_paths(package_dir, archive, force)
    with target_lock(archive):  # one writer per archive: a second run fails at once instead of both "succeeding"
        _check_paths(package_dir, archive, force)  # again, inside the lock: the first writer may have finished
        problems = verify_package(package_dir)
        if problems:
            raise ArchiveError(_refusal(f"{package_dir}: not packaged", package_dir, problems))
        members = _plan_members(package_dir)
        index = index_json(members).encode()
        write_atomically(archive, lambda f: _write_zip(f, package_dir, members, index))
    return members


def index_json(members: list[ArchiveMember]) -> str:
    """PACKAGE.json: every other member's size and sha256, in archive order, plus who wrote it."""
    index = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "created_by": {"name": "rwkv-deploy", "version": __version__},
        "alignment": ALIGNMENT,
        "members": {m.name: {"size": m.size, "sha256": m.sha256} for m in members},
    }
    return json.dumps(index, indent=2) + "\n"


def extract_package(archive: str | Path, dest_dir: str | Path) -> Path:
    """Verify `archive`, then extract it into the new (or empty) directory `dest_dir`, atomically.

    For runtimes that receive an archive. Unsafe member names (absolute, `..`) fail verification, so
    nothing is written outside `dest_dir`; every byte written is checked against the verified index.
    The index itself is not extracted: the result is the package directory that was packaged, and
    packaging it again gives the same archive."""
    archive, dest = Path(archive), Path(dest_dir)
    if is_link(dest) or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise ArchiveTargetError(f"{dest}: exists and is not an empty directory")
    if not archive.is_file():
        raise ArchiveTargetError(f"{archive}: no such archive")
    problems = verify_package(archive)
    if problems:
        raise ArchiveError(_refusal(f"{archive}: not extracted", archive, problems))
    with staged_directory(dest) as tmp, zipfile.ZipFile(archive) as zf:
        with zf.open(INDEX_NAME) as f:
            expected = parse_index(read_capped(f, INDEX_NAME))
        for info in zf.infolist():
            if not info.is_dir() and info.filename != INDEX_NAME:
                _extract_member(zf, info, tmp, expected[info.filename])
    return dest


# -- helpers --------------------------------------------------------------------------------------------


def _check_paths(package_dir: Path, archive: Path, force: bool) -> None:
    if not package_dir.is_dir():
        raise ArchiveTargetError(f"{package_dir}: no such package directory")
    if is_link(archive):
        raise ArchiveTargetError(f"{archive}: is a symbolic link; refusing to write through it")
    if archive.is_dir():
        raise ArchiveTargetError(f"{archive}: is a directory; give the archive's file name")
    if archive.exists() and not force:
        raise ArchiveTargetError(f"{archive}: exists (use --force to replace it)")
    if archive.resolve().is_relative_to(package_dir.resolve()):
        raise ArchiveTargetError(f"{archive}: inside the package directory it would contain")


def _refusal(what: str, target: Path, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more; run `rwkv-deploy verify {target}`)" if len(problems) > 1 else ""
    return f"{what}, it fails verification: {problems[0]}{more}"


def _plan_members(package_dir: Path) -> list[ArchiveMember]:
    """manifest.json first, then every other file sorted by path; an old PACKAGE.json is rebuilt, not copied.

    The files are the regular files the trust boundary listed (links were refused by verification). Hashes of
    manifest-listed files come from the manifest (just verified); the writer re-hashes every byte it copies
    (opening each file without following links), so a file changed or swapped in between still fails."""
    reader = DirReader(package_dir)
    if reader.problems:
        raise ArchiveError(f"{package_dir}: not packaged: {reader.problems[0]}")
    listed = read_package_manifest(reader)[0].files
    names = [MANIFEST_NAME] + [n for n in reader.names if n not in (MANIFEST_NAME, INDEX_NAME)]
    members = []
    for name in names:
        if name in listed:
            members.append(ArchiveMember(name, os.lstat(package_dir / name).st_size, listed[name]))
        else:
            sha256, size = reader.digest(name)
            members.append(ArchiveMember(name, size, sha256))
    return members


def _write_zip(f: BinaryIO, package_dir: Path, members: list[ArchiveMember], index: bytes) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _add_member(zf, ArchiveMember(INDEX_NAME, len(index), hashlib.sha256(index).hexdigest()), io.BytesIO(index))
        for member in members:
            try:
                src = open_regular_file(package_dir / member.name)
            except UnsafePathError as exc:
                raise ArchiveError(f"{exc} (changed while it was being packaged)") from None
            with src:
                _add_member(zf, member, src)


def _add_member(zf: zipfile.ZipFile, member: ArchiveMember, src: BinaryIO) -> None:
    """Append one stored member with fixed metadata, its data padded to an ALIGNMENT offset."""
    info = zipfile.ZipInfo(member.name, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, whatever the host: part of the bytes
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = member.size
    zip64 = member.size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule, so the header size is known here
    header = _LOCAL_HEADER_SIZE + len(member.name.encode()) + (_ZIP64_LOCAL_EXTRA_SIZE if zip64 else 0)
    info.extra = _alignment_extra(zf.start_dir + header)
    digest, size = hashlib.sha256(), 0
    with zf.open(info, "w", force_zip64=zip64) as dst:
        while block := src.read(_CHUNK):
            digest.update(block)
            size += len(block)
            dst.write(block)
    if (size, digest.hexdigest()) != (member.size, member.sha256):
        raise ArchiveError(f"{member.name}: changed while it was being packaged")


def _alignment_extra(data_offset_without_extra: int) -> bytes:
    """An extra field (at least 6 bytes) that moves the member's data to the next ALIGNMENT boundary."""
    size = (-(data_offset_without_extra + 6)) % ALIGNMENT + 6
    return struct.pack("<HHH", _ALIGN_EXTRA_ID, size - 4, ALIGNMENT) + bytes(size - 6)


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, expected: tuple[str, int]) -> None:
    """Copy one member under `root` (a folder this process just created), checking its bytes against its
    (verified) index entry; never more bytes than the index declares, never through a link."""
    target = (root / info.filename).resolve()
    if not target.is_relative_to(root.resolve()):  # verification already rejects such names
        raise ArchiveError(f"{info.filename}: refusing to extract outside {root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with zf.open(info) as src, os.fdopen(fd, "wb") as dst:
        while block := src.read(min(_CHUNK, expected[1] - size + 1)):
            digest.update(block)
            size += len(block)
            if size > expected[1]:
                break
            dst.write(block)
    if (digest.hexdigest(), size) != expected:
        raise ArchiveError(f"{info.filename}: changed while it was being extracted")
