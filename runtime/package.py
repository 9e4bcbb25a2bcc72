"""An exported package directory opened for inference: manifest, verified files, tokenizer, fresh state.

Opening goes through the package layer's trust boundary (`rwkv_deploy.package.trust`): the manifest is
parsed by the strict schema, every file it names must be a listed, regular file inside the package, nothing
unlisted may sit beside them, and every file's sha256 is checked, so a corrupt, tampered or crafted package
is refused with its name before any backend parses it. `verify=False` skips only the hashing (trusted local
packages), never the path rules. Nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.package.names import PREFILL_GRAPH, STEP_GRAPH
from rwkv_deploy.package.state_files import graph_sha256, load_initial_arrays
from rwkv_deploy.package.trust import PackageError, PackageFilesChanged, open_package_dir

from .state import RecurrentState

if TYPE_CHECKING:
    from rwkv_deploy.tokenization import Tokenizer

class InputError(RefusedError, ValueError):
    """Token ids the model cannot take (wrong shape or dtype, or outside the vocabulary)."""


def load_package_tokenizer(manifest: Manifest, package_dir: Path) -> "Tokenizer | None":
    """The package's tokenizer, or None for kind "none"; PackageError when it emits ids the model does not
    have. Imported lazily: tokenizer-less deployments never load the tokenizer modules."""
    info = manifest.tokenizer
    if info.kind == "none":
        return None
    from rwkv_deploy.tokenization import load_tokenizer

    tokenizer = load_tokenizer(info.kind, package_dir / info.files[0] if info.files else None,
                               max_vocab=manifest.model.vocab_size)
    if tokenizer.vocab_size > manifest.model.vocab_size:
        where = package_dir / (info.files[0] if info.files else "manifest.json")
        raise PackageError(f"{where}: the {info.kind} tokenizer has {tokenizer.vocab_size} tokens but the model's "
                           f"vocab_size is {manifest.model.vocab_size}")
    return tokenizer


@dataclass(frozen=True)
class DeploymentPackage:
    """What every backend needs from a package; open one with `DeploymentPackage.open(dir)`."""

    directory: Path
    manifest: Manifest
    tokenizer: "Tokenizer | None"
    initial_arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    verified: bool = True  # its files were hashed when opened (graphs are hashed again as they are loaded)

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = True) -> "DeploymentPackage":
        """Open the package through the trust boundary (`verify=False` skips hashing large graphs, never the
        path rules), load the tokenizer and the initial state (shapes checked before reading, finite)."""
        directory = Path(directory)
        manifest = open_package_dir(directory, hashes=verify)
        return cls(directory, manifest, load_package_tokenizer(manifest, directory),
                   load_initial_arrays(manifest, directory), verified=verify)

    @property
    def vocab_size(self) -> int:
        return self.manifest.model.vocab_size

    @property
    def graph_path(self) -> Path:
        return self.directory / self.manifest.graphs[STEP_GRAPH].path

    @property
    def prefill_graph_path(self) -> Path | None:
        """The prefill graph (`rwkv-deploy export --prefill`), or None when the package has none."""
        graph = self.manifest.graphs.get(PREFILL_GRAPH)
        return self.directory / graph.path if graph else None

    @property
    def graph_sha256(self) -> str | None:
        return graph_sha256(self.manifest, STEP_GRAPH)

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return RecurrentState.fresh(self.manifest, batch, self.initial_arrays)

    def check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """`tokens` as a contiguous int64 [batch] array; InputError names the first id outside the vocab."""
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0:
            raise InputError(f"tokens must be a non-empty 1-D array [batch], got shape {list(array.shape)}")
        if array.dtype.kind not in "iu":  # signed or unsigned integers
            raise InputError(f"token ids must be integers, got dtype {array.dtype}")
        bad = np.flatnonzero((array < 0) | (array >= self.vocab_size))
        if bad.size:
            position = int(bad[0])
            raise InputError(f"token id {int(array[position])} at position {position} is outside the "
                             f"vocabulary [0, {self.vocab_size})")
        return np.ascontiguousarray(array, dtype=np.int64)


@contextmanager
def package_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A package directory as it is, or an archive (`rwkv-deploy package`) verified and extracted to a
    temporary directory that is removed afterwards (also when a signal ends the process: the CLI turns
    SIGTERM and SIGHUP into exceptions, so this cleanup runs)."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    from rwkv_deploy.package.archive import extract_package

    remove_dead_extractions()
    with tempfile.TemporaryDirectory(prefix=f"{EXTRACT_PREFIX}{os.getpid()}-") as tmp:
        (Path(tmp) / EXTRACT_MARKER).write_text(f"{os.getpid()} {os.getuid()}\n")
        yield extract_package(path, Path(tmp) / "package")


EXTRACT_PREFIX = "rwkv-deploy-package-"
EXTRACT_MARKER = ".rwkv-deploy-extraction"


def remove_dead_extractions(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove what a killed `generate ARCHIVE` (SIGKILL: no cleanup ran) left in the temporary folder: folders
    named by our prefix and a pid that no longer runs, owned by us, holding our marker with that pid."""
    import re
    import shutil

    from rwkv_deploy.fileio import owned_leftover

    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(re.escape(EXTRACT_PREFIX) + r"(\d+)-[A-Za-z0-9_]+$")
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if not owned_leftover(path, pattern):  # our name pattern, a dead pid, our uid
            continue
        try:
            marker = (path / EXTRACT_MARKER).read_text(errors="replace").split()
        except OSError:
            continue
        if marker == [pattern.match(path.name).group(1), str(os.getuid())]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
