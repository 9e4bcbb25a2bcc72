"""Run the hostile-input corpora against any checkout of rwkv-deploy and count, by class: issue 14's and issue
23's CLI cases (tests/helpers/hostile_cases.py, hostile_cases_23.py: tried / one clean line / traceback /
written or lost / code run / accepted), the Node.js runner's (--node) and the HTTP server's (--serve).

Every case runs as `PYTHON -m rwkv_deploy.cli.main ...` in its own process (8 GiB address-space limit, so a
crafted size cannot exhaust the machine), on inputs this checkout builds. Usage:

    .venv/bin/python scripts/hostile_census.py                      # this checkout
    .venv/bin/python scripts/hostile_census.py --python OLD/python --pythonpath OLD_TREE   # another checkout
    .venv/bin/python scripts/hostile_census.py --node [--node-cli OLD_TREE/deploy/node/cli.js]  # the Node runner
    .venv/bin/python scripts/hostile_census.py --serve [--pythonpath OLD_TREE]   # `serve` over raw HTTP

An old checkout is made importable as `rwkv_deploy` by a folder of links laid out like pyproject.toml's
package-dir (scripts/hostile_census.py --mirror OLD_TREE DEST writes one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rwkv_deploy.package.archive import create_archive  # noqa: E402
from tests.helpers.hostile import Material, judge, run_subprocess, snapshot  # noqa: E402
from tests.helpers.hostile_cases import CASES as CASES_14  # noqa: E402
from tests.helpers.hostile_cases_23 import CASES_23  # noqa: E402

CASES = [*CASES_14, *(dataclasses.replace(c, klass=f"23 {c.klass}") for c in CASES_23)]
from tests.helpers.small_packages import export_small  # noqa: E402

COLUMNS = ("tried", "clean", "traceback", "written", "code", "accepted")
# clean: one clean line (or the expected success) and nothing written, no payload run, nothing accepted;
# the test suite also requires each case's exact message (tests/cli/test_hostile_corpus.py)


def _one_line(case, outcome) -> bool:
    """The issue's "one clean line", whatever the wording: the expected kind of exit (zero, or not) and, for a
    refusal, exactly one `error:` line on stderr (verify: FAILED on stdout), no traceback."""
    if outcome.traceback:
        return False
    if case.exit_code == 0:
        return outcome.exit_code == 0
    if outcome.exit_code == 0:
        return False
    if case.on_stdout:
        return "FAILED" in outcome.stdout and not outcome.stderr.strip()
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def _cli(python: str, pythonpath: str | None, *args, env: dict | None = None, log=None) -> subprocess.Popen:
    """`rwkv-deploy ARGS` of the checkout under test; its output piped back, or into the open file `log`."""
    environ = dict(os.environ, **(env or {}))
    if pythonpath:
        environ["PYTHONPATH"] = pythonpath
    outputs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if log is None else {
        "stdout": log, "stderr": subprocess.STDOUT}
    return subprocess.Popen([python, "-m", "rwkv_deploy.cli.main", *map(str, args)], env=environ, **outputs)


def _wait_for(condition, process, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def interrupt_scenarios(python: str, pythonpath: str | None, material: Material, tmp: Path) -> list[dict]:
    """The interrupted and concurrent runs of issue 14 (tests/cli/test_interrupts.py asserts them for this
    checkout): clean = exit 128+n with one line and nothing left; for SIGKILL, the next run cleans up; for two
    concurrent exports, exactly one succeeds."""
    rows = []

    def row(name: str, clean: bool, written: list[str], traceback: bool = False) -> None:
        rows.append({"case": name, "class": "interrupt", "clean": clean, "traceback": traceback, "written": written,
                     "code": False, "accepted": False})

    for signum in (signal.SIGTERM, signal.SIGHUP):
        root = tmp / f"sig{signum}"
        root.mkdir()
        p = _cli(python, pythonpath, "export", material.checkpoint, "--out", root / "out", "--quiet")
        _wait_for(lambda: any(x.name.startswith(".out.tmp") for x in root.iterdir()), p)
        p.send_signal(signum)
        _, err = p.communicate()
        left = sorted(x.name for x in root.iterdir())
        lines = err.decode(errors="replace").strip().splitlines()
        row(f"export-{signal.Signals(signum).name}", p.returncode == 128 + signum and len(lines) == 1, left,
            "Traceback" in err.decode(errors="replace"))
    root = tmp / "sigkill"
    root.mkdir()
    p = _cli(python, pythonpath, "export", material.checkpoint, "--out", root / "out", "--quiet")
    _wait_for(lambda: any(x.name.startswith(".out.tmp") for x in root.iterdir()), p)
    p.kill()
    p.wait()
    again = _cli(python, pythonpath, "export", material.checkpoint, "--out", root / "out", "--quiet")
    again.communicate()
    left = sorted(x.name for x in root.iterdir() if x.name != "out")
    row("export-SIGKILL-then-rerun", again.returncode == 0 and not left, left)
    root = tmp / "archive-sigterm"
    (root / "tmp").mkdir(parents=True)
    p = _cli(python, pythonpath, "generate", material.archive, "--prompt", "Hi", "--max-tokens", "1000000",
             env={"TMPDIR": str(root / "tmp")})
    _wait_for(lambda: any(y.name == "package" for x in (root / "tmp").iterdir() if x.is_dir() for y in x.iterdir()), p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    left = sorted(x.name for x in (root / "tmp").iterdir() if x.name != ".ses")  # onnxruntime's own file
    row("generate-archive-SIGTERM", p.returncode == 128 + signal.SIGTERM and not left, left,
        "Traceback" in err.decode(errors="replace"))
    root = tmp / "concurrent"
    root.mkdir()
    runs = [_cli(python, pythonpath, "export", material.checkpoint, "--out", root / "out", "--quiet") for _ in range(2)]
    codes = sorted(r.wait() for r in runs)
    for r in runs:
        r.communicate()
    row("two-exports-one-out", codes[0] == 0 and codes[1] != 0, [] if codes[1] != 0 else ["both claimed success"])
    return rows


def node_census(cli: Path, pattern: str) -> int:
    """Issue 23's Node.js cases (tests/helpers/hostile_node.py) through `node CLI`, one process each: clean = the
    expected exit code with exactly one `error:` line naming the problem (or success), nothing harmed; dangerous =
    accepted although it should be refused, or a user's file harmed; bad = anything else."""
    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from tests.helpers.hostile_node import CASES as NODE_CASES, NodeMaterial
    from tests.helpers.random_checkpoints import make_checkpoint
    import torch

    counts = defaultdict(int)
    with tempfile.TemporaryDirectory(prefix="hostile-node-") as tmp:
        tmp = Path(tmp)
        package = export_small(tmp, "7", "fp32", tokenizer="bytes")
        torch.save(make_checkpoint("6", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=5, time_state=True),
                   tmp / "tuned6.pth")
        export_package(tmp / "tuned6.pth", tmp / "tuned", ExportOptions(tokenizer="none"))
        material = NodeMaterial(package, tmp / "tuned")
        for index, case in enumerate(c for c in NODE_CASES if pattern in c.name):
            root = tmp / f"node{index}"
            root.mkdir()
            argv = case.build(root, material)
            try:
                done = subprocess.run(["node", str(cli), *argv], capture_output=True, timeout=300, cwd=root)
            except subprocess.TimeoutExpired:
                verdict, code, lines = "bad", "hung", []
            else:
                code, err = done.returncode, done.stderr.decode(errors="replace")
                lines = [line for line in err.splitlines() if line.strip()]
                harmed = case.intact is not None and not case.intact(root)
                if harmed or (case.exit_code and code == 0):
                    verdict = "dangerous"
                elif case.exit_code == 0:
                    verdict = "clean" if code == 0 else "bad"
                else:
                    verdict = "clean" if (code == case.exit_code and len(lines) == 1 and lines[0].startswith("error: ")
                                          and case.message in lines[0]) else "bad"
            counts[verdict] += 1
            print(f"{verdict:9s} {case.name:35s} exit {code} {lines[-1][:100] if lines else ''}", file=sys.stderr)
    total = sum(counts.values())
    print("| runner | tried | clean | bad | dangerous |")
    print("|---|---|---|---|---|")
    print(f"| node | {total} | {counts['clean']} | {counts['bad']} | {counts['dangerous']} |")
    return 0


def serve_census(python: str, pythonpath: str | None, pattern: str) -> int:
    """The HTTP cases (tests/helpers/hostile_http.py) against `serve` of the golden RWKV-7 package: clean = the
    expected answer, the server healthy after it and no traceback logged; dangerous = the server down or hung,
    or a request from a foreign origin answered; bad = anything else."""
    import httpx

    from tests.helpers.golden import golden_package
    from tests.helpers.hostile_http import CASES as HTTP_CASES, MODEL, REQUEST_TIMEOUT, status_of
    from tests.helpers.ports import free_port

    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with tempfile.TemporaryDirectory(prefix="hostile-serve-") as tmp:
        log_path, port = Path(tmp) / "serve.log", free_port()
        base = ["serve", f"{MODEL}={golden_package('v7-fp32')}", "--port", str(port), "--threads", "1",
                "--max-body-mib", "0.25"]
        server = None
        for extra in (["--request-timeout", str(REQUEST_TIMEOUT)], []):  # an old checkout lacks the option
            with open(log_path, "wb") as log:
                server = _cli(python, pythonpath, *base, *extra, env={"PYTHONUNBUFFERED": "1"}, log=log)
            if _wait_for(lambda: _healthy(httpx, port), server, timeout=60):
                break
            server.kill()
            server.wait()
        try:
            for case in (c for c in HTTP_CASES if pattern in c.name):
                logged = log_path.read_text(errors="replace").count("Traceback")
                try:
                    outcome = status_of(case.send("127.0.0.1", port))
                except OSError as exc:
                    outcome = type(exc).__name__
                healthy = _healthy(httpx, port)
                traceback = log_path.read_text(errors="replace").count("Traceback") > logged
                if not healthy or outcome == "hung" or (case.klass == "origin" and outcome == 200):
                    verdict = "dangerous"
                elif case.accepts(outcome) and not traceback:
                    verdict = "clean"
                else:
                    verdict = "bad"
                counts[case.klass][verdict] += 1
                counts["all"][verdict] += 1
                print(f"{verdict:9s} {case.name:30s} answer {outcome} (want {case.expect})"
                      f"{' traceback logged' if traceback else ''}", file=sys.stderr)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    print("| class | tried | clean | bad | dangerous |")
    print("|---|---|---|---|---|")
    for klass in sorted(counts, key=lambda k: (k == "all", k)):
        c = counts[klass]
        print(f"| {klass} | {sum(c.values())} | {c['clean']} | {c['bad']} | {c['dangerous']} |")
    return 0


def _healthy(httpx, port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def write_mirror(tree: Path, dest: Path) -> None:
    """`dest`/rwkv_deploy: links laid out as `tree`'s pyproject.toml package-dir maps them, so that PYTHONPATH=dest
    imports that checkout's code (its own folders: no install needed)."""
    import tomllib

    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = dest / "rwkv_deploy"
    root.mkdir(parents=True)
    for entry in (tree / mapping["rwkv_deploy"]).iterdir():
        (root / entry.name).symlink_to(entry.resolve())
    for package, folder in mapping.items():
        if package != "rwkv_deploy":
            (root / package.split(".", 1)[1]).symlink_to((tree / folder).resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the checkout under test")
    parser.add_argument("--pythonpath", default=None, help="PYTHONPATH that makes `rwkv_deploy` that checkout")
    parser.add_argument("--json", type=Path, default=None, help="also write every case's verdict here")
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--node", action="store_true", help="issue 23's Node.js runner cases instead")
    parser.add_argument("--corpus", choices=("14", "23", "all"), default="all",
                        help="which CLI corpus: issue 14's, issue 23's Python-side classes, or both")
    parser.add_argument("--serve", action="store_true", help="the HTTP server's cases instead")
    parser.add_argument("--mirror", nargs=2, type=Path, metavar=("TREE", "DEST"),
                        help="write DEST/rwkv_deploy for checkout TREE and stop")
    parser.add_argument("--node-cli", type=Path, default=REPO / "deploy" / "node" / "cli.js",
                        help="the Node runner under test (another checkout's deploy/node/cli.js)")
    args = parser.parse_args()
    if args.mirror:
        write_mirror(*args.mirror)
        return 0
    if args.node:
        return node_census(args.node_cli, args.k)
    if args.serve:
        return serve_census(args.python, args.pythonpath, args.k)
    rows, counts = [], defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    with tempfile.TemporaryDirectory(prefix="hostile-census-") as tmp:
        tmp = Path(tmp)
        package = export_small(tmp, "7", "fp32", tokenizer="bytes", prefill=True)
        create_archive(package, tmp / "model.zip")
        material = Material(package, tmp / "v7-seed0.pth", tmp / "model.zip")
        chosen = [c for c in CASES if args.k in c.name
                  and args.corpus in ("all", "23" if c.klass.startswith("23 ") else "14")]
        for index, case in enumerate(chosen):
            root = tmp / f"case{index}"
            root.mkdir()
            argv = case.build(root, material)
            before = snapshot(root)
            started = time.perf_counter()
            try:
                outcome = run_subprocess(case, root, argv, args.python, args.pythonpath)
            except Exception as exc:  # a timeout: the command hung
                print(f"{case.name}: {type(exc).__name__}", file=sys.stderr)
                continue
            verdict = judge(case, outcome, before, snapshot(root), root)
            one_line = _one_line(case, outcome)
            row = {"case": case.name, "class": case.klass, "exit": outcome.exit_code, "clean": one_line,
                   "expected_message": verdict.clean,
                   "traceback": verdict.traceback, "written": verdict.written, "code": verdict.code,
                   "accepted": verdict.accepted, "seconds": round(time.perf_counter() - started, 2),
                   "stderr_tail": outcome.stderr.strip().splitlines()[-1:] if outcome.stderr.strip() else []}
            rows.append(row)
            for klass in (case.klass, "all"):
                c = counts[klass]
                c["tried"] += 1
                c["clean"] += one_line and not verdict.written and not verdict.code and not verdict.accepted
                c["traceback"] += verdict.traceback
                c["written"] += bool(verdict.written)
                c["code"] += verdict.code
                c["accepted"] += verdict.accepted
            mark = "ok " if verdict.ok else ("ok~" if one_line and not verdict.written and not verdict.accepted else "BAD")
            print(f"{mark} {case.name:45s} exit {outcome.exit_code:3d} {row['stderr_tail'][:1]}", file=sys.stderr)
        if not args.k and args.corpus != "23":
            for row in interrupt_scenarios(args.python, args.pythonpath, material, tmp):
                rows.append(row)
                ok = row["clean"] and not row["written"]
                print(f"{'ok ' if ok else 'BAD'} {row['case']:45s} left {row['written']}", file=sys.stderr)
                for klass in ("interrupt", "all"):
                    c = counts[klass]
                    c["tried"] += 1
                    c["clean"] += ok
                    c["traceback"] += row["traceback"]
                    c["written"] += bool(row["written"])
    print("| class | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for klass in sorted(counts, key=lambda k: (k == "all", k)):
        print(f"| {klass} | " + " | ".join(str(counts[klass][c]) for c in COLUMNS) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
