"""Check the import contracts in pyproject.toml ([tool.importlinter]) with import-linter.

The sub-packages of rwkv_deploy live in separate top-level folders (setuptools `package-dir`), which an
editable install maps at import time; import-linter finds modules by walking the package's folder, so it
would only see core/. This script lays the source out as installed (`rwkv_deploy/package/...`, file
links into the repository) in a temporary folder and runs `lint-imports` there.

    python scripts/check_imports.py [--root REPO]     # exit 0: every contract kept
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path


def mirror_layout(root: Path, dest: Path) -> Path:
    """Link every .py file of each mapped folder into `dest/<package path>`; returns the config's path."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        source = root / folder
        target = dest.joinpath(*package.split("."))
        for path in source.rglob("*.py"):
            relative = path.relative_to(source)
            if "__pycache__" in relative.parts or _mapped_elsewhere(package, relative, mapping):
                continue
            link = target / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, link)
    return root / "pyproject.toml"


def _mapped_elsewhere(package: str, relative: Path, mapping: dict[str, str]) -> bool:
    """A file under a folder that is itself another mapped package (none today, but cheap to respect)."""
    dotted = ".".join((package, *relative.parent.parts)) if relative.parent.parts else package
    return dotted != package and dotted in mapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rwkv-deploy-imports-") as tmp:
        config = mirror_layout(args.root.resolve(), Path(tmp))
        lint = Path(sys.executable).with_name("lint-imports")
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.run([str(lint), str(config), "--no-cache"], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
