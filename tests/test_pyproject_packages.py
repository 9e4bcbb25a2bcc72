"""Every Python folder of the project is installed: a sub-package missing from pyproject.toml's `packages`
works in the editable install the tests use and is absent from a wheel (targets/genai was, until this test)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[dict[str, str], set[str]]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["package-dir"], set(setuptools["packages"])


def test_every_folder_with_an_init_is_a_declared_package() -> None:
    mapping, declared = _declared()
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((package, *relative.parts)))
    assert found - declared == set(), "folders a wheel would leave out"
    assert declared - found == set(), "declared packages with no folder"
