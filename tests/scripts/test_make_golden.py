"""The committed golden packages are what the exporter makes today: scripts/make_golden.py run again writes the
same packages (manifests with the same file hashes) and the same reference logits. When an export change is
meant, run `python scripts/make_golden.py` and commit tests/golden/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.golden import GOLDEN_DIR, NAMES, golden_expected

pytestmark = pytest.mark.slow  # exports four packages

REFERENCE_ATOL = 1e-6  # the reference's arithmetic may round differently on another CPU
COMMITTED_MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The script run as a user runs it, into a scratch folder."""
    out = tmp_path_factory.mktemp("golden")
    script = GOLDEN_DIR.parents[1] / "scripts" / "make_golden.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["packages"] == list(NAMES)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_a_fresh_export_is_the_committed_package(fresh: Path, name: str) -> None:
    committed = json.loads((GOLDEN_DIR / name / "manifest.json").read_text())
    made = json.loads((fresh / name / "manifest.json").read_text())
    assert made == committed, f"tests/golden/{name} is stale: run `python scripts/make_golden.py` and commit it"


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_logits_are_the_committed_ones(fresh: Path, name: str) -> None:
    tokens, logits = golden_expected(name)
    with np.load(fresh / f"{name}.expected.npz") as data:
        np.testing.assert_array_equal(data["tokens"], tokens)
        np.testing.assert_allclose(data["reference_logits"], logits, rtol=0, atol=REFERENCE_ATOL)


def test_the_committed_golden_data_stays_small() -> None:
    total = sum(f.stat().st_size for f in GOLDEN_DIR.rglob("*") if f.is_file())
    assert total <= COMMITTED_MAX_BYTES
