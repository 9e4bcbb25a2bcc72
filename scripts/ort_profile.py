"""Where a package's decode step spends its time, by ONNX Runtime's own profiler: time per op type and the
slowest nodes.

    python scripts/ort_profile.py PACKAGE [--batch 1] [--threads 1] [--steps 12]

The step graph at `--batch`, zero state, the runtime's session settings (all optimizations, no spin-waiting);
the first third of the steps are warm-up. The profiler adds its own cost per node, so read shares, not totals.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

import onnxruntime as ort
from ort_threading import zero_feeds  # this folder is on sys.path when a script here runs

from rwkv_deploy.runtime.onnx_backend import session_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    manifest = json.loads((args.package / "manifest.json").read_text())
    options = session_options(args.threads)  # the runtime's own settings
    options.enable_profiling = True
    session = ort.InferenceSession(str(args.package / manifest["graphs"]["step"]["path"]), options,
                                   providers=["CPUExecutionProvider"])
    feeds = zero_feeds(session, args.batch)
    for _ in range(args.steps):
        session.run(None, feeds)
    trace = session.end_profiling()
    events = json.loads(Path(trace).read_text())
    os.remove(trace)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    warm = args.steps // 3
    nodes, timed = nodes[len(nodes) * warm // args.steps:], args.steps - warm
    by_type: dict[str, float] = collections.defaultdict(float)
    by_node: dict[str, float] = collections.defaultdict(float)
    shapes = {}
    for e in nodes:
        by_type[e["args"]["op_name"]] += e["dur"] / timed / 1000
        by_node[e["name"]] += e["dur"] / timed / 1000
        shapes[e["name"]] = (e["args"]["op_name"], e["args"].get("output_type_shape"))
    print(f"{args.package.name}: batch {args.batch}, {args.threads} thread(s), {timed} profiled steps; "
          f"nodes sum {sum(by_type.values()):.1f} ms per step")
    for name, ms in sorted(by_type.items(), key=lambda item: -item[1])[:12]:
        print(f"  {name:22s} {ms:8.2f} ms")
    print("slowest nodes:")
    for name, ms in sorted(by_node.items(), key=lambda item: -item[1])[:8]:
        print(f"  {ms:8.3f} ms  {shapes[name][0]} -> {shapes[name][1]}")


if __name__ == "__main__":
    main()
