"""manifest.json on disk: the one reader (capped, never through a link, strict schema) and the one writer
(atomic: temporary file then rename, so a crash never leaves half a manifest). Export writes a package's
first manifest through here and engine installs rewrite it through here, from a typed `Manifest` edited
with `dataclasses.replace`, so every manifest.json this project writes is one the schema accepts."""

from __future__ import annotations

from pathlib import Path

from rwkv_deploy.fileio import UnsafePathError, open_regular_file, write_bytes_atomically

from .manifest import Manifest, ManifestError
from .names import MANIFEST_NAME
from .schema import parse_manifest, read_capped


def read_manifest(package_dir: str | Path) -> Manifest:
    """manifest.json of `package_dir`, read capped (never through a link) and parsed by the strict schema.

    This checks the manifest alone; a package about to be used goes through `trust.open_package_dir`,
    which also checks every file it names."""
    path = Path(package_dir) / MANIFEST_NAME
    try:
        with open_regular_file(path) as f:
            data = read_capped(f, str(path))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest.json (is {package_dir} an rwkv-deploy package?)") from None
    except (OSError, UnsafePathError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    return parse_manifest(data, str(path))


def write_manifest(package_dir: str | Path, manifest: Manifest) -> Path:
    """Write `manifest` as `package_dir`/manifest.json, atomically; checked against the schema first, so
    nothing this project writes is a manifest its own readers refuse. Returns the path."""
    data = manifest.to_json().encode()
    path = Path(package_dir) / MANIFEST_NAME
    parse_manifest(data, str(path))
    write_bytes_atomically(path, data)
    return path
