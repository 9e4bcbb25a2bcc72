"""`rwkv-deploy bench-serve` against a real `rwkv-deploy serve`: one JSON row per concurrency, every token
counted, the shared prefix found in the server's prefix cache."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from tests.helpers.serve_process import start_serve
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture(scope="module")
def server(shared_package, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = start_serve([f"tiny={shared(shared_package, '7')}"], log, "--prefill-chunk", "64")
    yield process
    assert process.stop() == 0, process.log_tail()


def test_bench_serve_reports_each_concurrency(server):
    result = CliRunner().invoke(app, ["bench-serve", server.url, "--model", "tiny", "--streams", "1,3",
                                      "--tokens", "8", "--prompt-tokens", "20", "--repeat-prefix", "40", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["streams"] for r in report["rounds"]] == [1, 3]
    for row in report["rounds"]:
        assert row["errors"] == 0 and row["generated_tokens"] == 8 * row["streams"]
        # no chunk boundary inside the 40-token prefix: the warm-up's second request cached the state where the
        # two warm-up prompts part, rounded down to the 16-token cut granule
        assert row["cache_hit_rate"] == 1.0 and row["cached_prompt_tokens"] == 32 * row["streams"]
        assert row["tokens_per_s"] > 0 and row["ttft_p50_s"] > 0


def test_bench_serve_says_when_the_model_is_not_there(server):
    result = CliRunner().invoke(app, ["bench-serve", server.url, "--model", "other", "--streams", "1"])
    assert result.exit_code == 2 and "404" in result.stderr and "other" in result.stderr


def test_a_soak_with_clients_that_leave_accounts_for_every_request(server):
    result = CliRunner().invoke(app, ["bench-serve", server.url, "--model", "tiny", "--streams", "4", "--tokens", "6",
                                      "--prompt-tokens", "3", "--soak-requests", "40", "--disconnect-fraction", "0.5"])
    assert result.exit_code == 0, result.stderr
    soak = json.loads(result.stdout)
    assert soak["finished"] + soak["disconnected"] == 40 and soak["disconnected"] > 0
    assert soak["errors"] == {} and soak["hung"] == 0 and soak["server_active_after"] == 0
    assert soak["server_rss_kib_last"] > 0  # the server's RSS, found from the port


def test_the_table_has_one_row_per_round():
    from rwkv_deploy.bench.serve_load import RoundResult, ServeLoadResult, table

    row = RoundResult(streams=4, requests=4, errors=0, generated_tokens=64, wall_s=2.0, tokens_per_s=32.0,
                      per_stream_tokens_per_s=8.0, ttft_p50_s=0.1, ttft_p99_s=0.2, itl_p50_ms=50.0, itl_p99_ms=90.0,
                      cached_prompt_tokens=0, cache_hit_rate=0.5)
    lines = table(ServeLoadResult("http://x", "m", 16, 8, 0, [row], [])).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[2].count("|") == 10
    assert lines[2] == "| 4 | 32.0 | 8.0 | 0.100 | 0.200 | 50.0 | 90.0 | 50% | 0 |"
