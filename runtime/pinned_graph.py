"""Loading a package's graph into ONNX Runtime with no gap between checking a file and using it.

`DeploymentPackage.open` hashes every file, but a session is made later (the prefill graph's only when a prompt
first needs it, after the prompt was encoded), and ONNX Runtime would open the files again by path: a graph
swapped in between would run unchecked. So:

- the graph's protobuf is read once through a descriptor opened without following links, hashed, and ONNX
  Runtime is given those very bytes (never the path);
- its external data (the weights, too large to copy) is opened the same way before the session is made and
  stays open; after ONNX Runtime has read it from the graph's folder, the path must still name the inode
  that was opened (a file renamed or linked over it is caught) and that inode's bytes must still have the
  manifest's sha256 (a file written in place is caught).

What is left: a file rewritten in place and restored within the moment ONNX Runtime reads it. With
`verify=False` (a trusted local package) nothing is hashed, the rest holds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rwkv_deploy.package.manifest import external_data_path
from rwkv_deploy.package.trust import PackageFilesChanged

from .package import DeploymentPackage

CHUNK = 1 << 20
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"


def _open_file(path: Path) -> int:
    """A read descriptor of the regular file `path`, its last component not followed if it is a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise PackageFilesChanged(f"{path}: cannot be opened any more ({exc.strerror}); it changed after the "
                                  "package was opened") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackageFilesChanged(f"{path}: is no longer a regular file; it changed after the package was opened")
    return fd


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, total = [], 0
    while total <= size:
        chunk = os.pread(fd, CHUNK, total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _sha256_of(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _changed(path: Path) -> PackageFilesChanged:
    return PackageFilesChanged(f"{path}: sha256 no longer matches manifest.json (the file changed after the "
                               "package was opened)")


def pinned_session(package: DeploymentPackage, graph_name: str, options: ort.SessionOptions,
                   providers: Sequence[Any]) -> ort.InferenceSession:
    """An InferenceSession of the package's graph `graph_name` built from the bytes that were checked (module
    docstring). `options` is used for this session alone (it gets the external data folder)."""
    graph = package.manifest.graphs[graph_name]
    return pinned_file_session(package, graph.path, graph.external_data, options, providers)


def pinned_file_session(package: DeploymentPackage, graph_path: str, external_data: str | None,
                        options: ort.SessionOptions, providers: Sequence[Any]) -> ort.InferenceSession:
    """The same for any graph file the manifest lists (a CPU graph): `graph_path` and its `external_data`."""
    path = package.directory / graph_path
    files = package.manifest.files
    fd = _open_file(path)
    data_fd = None
    try:
        model = _read_all(fd)
        if package.verified and hashlib.sha256(model).hexdigest() != files.get(graph_path):
            raise _changed(path)
        data_path = None
        if external_data:
            data_rel = external_data_path(graph_path, external_data)
            data_path = package.directory / data_rel
            data_fd = _open_file(data_path)
            options.add_session_config_entry(EXTERNAL_FOLDER, str(path.parent))
        session = ort.InferenceSession(model, options, providers=list(providers))
        if data_fd is not None and data_path is not None:
            opened = os.fstat(data_fd)
            try:
                now = os.lstat(data_path)
            except OSError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                raise PackageFilesChanged(f"{data_path}: was replaced while the graph was being loaded")
            if package.verified and _sha256_of(data_fd) != files.get(data_rel):
                raise _changed(data_path)
        return session
    finally:
        os.close(fd)
        if data_fd is not None:
            os.close(data_fd)
