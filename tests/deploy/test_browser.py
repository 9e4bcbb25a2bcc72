"""deploy/web end to end: the page, served over localhost, runs packages in Debian's Chromium (headless, driven by
playwright-core, onnxruntime-web from local files) and generates exactly the Python runtime's greedy tokens."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.deploy.jsutil import REPO, WEB_DIR, python_greedy

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

DOCS_SCREENSHOT = REPO / "docs" / "images" / "browser-demo.png"


def load_serve_module():
    spec = importlib.util.spec_from_file_location("rwkv_web_serve", WEB_DIR / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(chromium, bundled_pkg, external_pkg, tuned_pkg, world_pkg):
    serve = load_serve_module()
    httpd, base = serve.serve_in_thread({"tiny": bundled_pkg, "external": external_pkg, "tuned": tuned_pkg,
                                         "world": world_pkg})
    yield base
    httpd.shutdown()
    httpd.server_close()


def run_page(node: str, base: str, package: str, prompt: str, max_tokens: int, screenshot: Path | None = None,
             **extra: str) -> dict:
    query = urlencode({"package": package, "prompt": prompt, "max_tokens": max_tokens, "greedy": 1, "autorun": 1, **extra})
    args = [node, str(WEB_DIR / "headless.js"), f"{base}web/?{query}", "--timeout", "150"]
    if screenshot:
        args += ["--screenshot", str(screenshot)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=REPO)
    lines = out.stdout.strip().splitlines()
    assert lines, f"headless.js printed nothing (exit {out.returncode}): {out.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert report.get("outside_requests", []) == [], "the page tried to load files from another host"
    report["stderr"] = out.stderr
    report["returncode"] = out.returncode
    return report


def test_browser_generates_the_python_runtimes_greedy_tokens(node, server, bundled_pkg, tmp_path):
    prompt = "class Stack:\n    def "
    ref = python_greedy(bundled_pkg, prompt, 64)
    shot = tmp_path / "browser-demo.png"
    report = run_page(node, server, "/packages/tiny/", prompt, 64, screenshot=shot)
    assert report["status"] == "done" and report["returncode"] == 0, report
    result = report["result"]
    assert result["promptIds"] == ref.prompt_ids
    assert result["tokenIds"] == ref.token_ids
    assert result["text"] == ref.text
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nbrowser: {len(result['tokenIds'])} greedy tokens identical to Python's, "
          f"{result['stats']['decodeTokensPerSecond']:.1f} tokens/s; screenshot {shot}")
    if os.environ.get("RWKV_UPDATE_DOCS_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


@pytest.mark.parametrize("name, prompt", [("external", "abc"), ("tuned", "10 20 30 40"), ("world", "Hello 世界 🎉 café")])
def test_browser_external_data_initial_state_and_world_tokenizer(node, server, external_pkg, tuned_pkg, world_pkg,
                                                                 name, prompt):
    package_dir = {"external": external_pkg, "tuned": tuned_pkg, "world": world_pkg}[name]
    ref = python_greedy(package_dir, [int(t) for t in prompt.split()] if name == "tuned" else prompt, 24)
    report = run_page(node, server, f"../packages/{name}/", prompt, 24)  # relative to the page
    assert report["status"] == "done", report
    assert report["result"]["promptIds"] == ref.prompt_ids
    assert report["result"]["tokenIds"] == ref.token_ids
    if name != "tuned":
        assert report["result"]["text"] == ref.text


def test_browser_names_a_missing_package_file(node, server):
    report = run_page(node, server, "/packages/nothing-here/", "x", 4)
    assert report["status"] == "error" and report["returncode"] == 1
    assert report["error"].startswith(f"{server}packages/nothing-here/manifest.json: HTTP 404"), report["error"]
