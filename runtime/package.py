"""An exported package directory opened for inference: manifest, verified files, tokenizer, fresh state.

Opening checks every file against the manifest's sha256 first, so a corrupt or tampered graph is
refused with its name before any backend parses it. Nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import Manifest, read_manifest, verify_files
from rwkv_deploy.package.names import PREFILL_GRAPH, STEP_GRAPH
from rwkv_deploy.package.state_files import graph_sha256, load_initial_arrays

from .state import RecurrentState

if TYPE_CHECKING:
    from rwkv_deploy.tokenization import Tokenizer

class PackageError(RwkvDeployError):
    """A package that cannot be used: files missing or changed since export, or no step graph."""

    exit_code = 2


class PackageFilesChanged(PackageError):
    """A file the manifest lists is missing or no longer has the sha256 recorded at export."""


class InputError(RwkvDeployError, ValueError):
    """Token ids the model cannot take (wrong shape or dtype, or outside the vocabulary)."""

    exit_code = 2


def load_package_tokenizer(manifest: Manifest, package_dir: Path) -> "Tokenizer | None":
    """The package's tokenizer, or None for kind "none". Imported lazily: tokenizer-less
    deployments never load the tokenizer modules."""
    info = manifest.tokenizer
    if info.kind == "none":
        return None
    from rwkv_deploy.tokenization import load_tokenizer

    return load_tokenizer(info.kind, package_dir / info.files[0] if info.files else None)


@dataclass(frozen=True)
class DeploymentPackage:
    """What every backend needs from a package; open one with `DeploymentPackage.open(dir)`."""

    directory: Path
    manifest: Manifest
    tokenizer: "Tokenizer | None"
    initial_arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = True) -> "DeploymentPackage":
        """Read the manifest, check file hashes (`verify=False` skips hashing large graphs), load the tokenizer."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if STEP_GRAPH not in manifest.graphs:
            raise PackageError(f"{directory}: the manifest lists no {STEP_GRAPH!r} graph "
                               f"(has: {', '.join(manifest.graphs) or 'none'})")
        if verify:
            problems = verify_files(directory, manifest)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise PackageFilesChanged(problems[0] + more)
        return cls(directory, manifest, load_package_tokenizer(manifest, directory),
                   load_initial_arrays(manifest, directory))

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
    temporary directory that is removed afterwards."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    from rwkv_deploy.package.archive import extract_package

    with tempfile.TemporaryDirectory(prefix="rwkv-deploy-package-") as tmp:
        yield extract_package(path, Path(tmp) / "package")
