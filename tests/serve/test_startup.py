"""What `rwkv-deploy serve` checks before it listens: the packages pass the trust boundary (one line, exit 2,
nothing served), an archive is served under its name, model ids are unique."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx

from rwkv_deploy.package.archive import create_archive
from tests.helpers.serve_process import start_serve


def serve_fails(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "rwkv_deploy.cli.main", "serve", *args, "--port", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


def test_a_tampered_package_is_refused_naming_the_file(serve_pkg, tmp_path):
    copy = shutil.copytree(serve_pkg, tmp_path / "tampered")
    graph = next(copy.glob("*.prefill.onnx"))
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1
    graph.write_bytes(bytes(data))
    assert graph.name in serve_fails(str(copy)).stderr


def test_a_package_without_a_tokenizer_is_refused(serve_pkg, tmp_path):
    copy = shutil.copytree(serve_pkg, tmp_path / "no-tokenizer")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"] = {"kind": "none", "files": [], "eos_token_id": None}  # bytes has no files to drop
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "no tokenizer" in serve_fails(str(copy)).stderr


def test_model_ids_must_be_unique_and_templates_name_served_models(serve_pkg):
    assert "served twice" in serve_fails(f"a={serve_pkg}", f"a={serve_pkg}").stderr
    assert "not served" in serve_fails(f"a={serve_pkg}", "--chat-template", "b=g1").stderr
    assert "unknown chat template" in serve_fails(str(serve_pkg), "--chat-template", "chatml").stderr


def test_an_archive_is_served_under_its_name_next_to_a_folder(serve_pkg, tmp_path):
    archive = tmp_path / "tiny-archive.zip"
    create_archive(serve_pkg, archive)
    server = start_serve([archive, f"folder={serve_pkg}"], tmp_path / "serve.log", "--chat-template", "tiny-archive=none",
                         "--access-log")
    try:
        assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["tiny-archive", "folder"]
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        refused = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny-archive", **body})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_chat_template"
        assert httpx.post(f"{server.url}/v1/chat/completions", json={"model": "folder", **body}).status_code == 200
        assert '"POST /v1/chat/completions HTTP/1.1" 200' in server.log.read_text()  # --access-log
    finally:
        assert server.stop() == 0, server.log_tail()
