"""The copy-paste examples of docs/deploy.md ("## Node.js" and "## Browser") run as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.deploy.jsutil import REPO
from tests.helpers.ports import free_port

DOC = REPO / "docs" / "deploy.md"


def section_blocks(title: str) -> list[str]:
    """The ```bash blocks of the section `## title` (up to the next `## `)."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"{DOC}: no section '## {title}'"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.M | re.S)


def run_blocks(blocks: list[str], timeout: float = 300) -> str:
    """Run the blocks in one bash (-e: any failing command fails), from the repository root, with this venv's
    commands on PATH; the whole process group is killed afterwards (background servers included)."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "PORT": str(free_port())}
    script = "set -euo pipefail\n" + "\n".join(blocks)
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"docs example failed (exit {proc.returncode}):\n{err[-3000:]}"
    return out


@pytest.mark.slow  # runs Node.js and Chromium
def test_node_and_browser_examples_run(node, chromium):
    node_blocks, browser_blocks = section_blocks("Node.js"), section_blocks("Browser")
    assert len(node_blocks) >= 2 and len(browser_blocks) >= 1
    out = run_blocks(node_blocks)
    assert "tokens/s" in out and len(out.strip().splitlines()) >= 3, out
    out = run_blocks(browser_blocks)  # uses the package the Node.js example exported
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] == "done" and len(report["result"]["tokenIds"]) == 64, report
    assert report["outside_requests"] == []
    assert (REPO / "demo-out" / "browser-demo.png").stat().st_size > 10_000

