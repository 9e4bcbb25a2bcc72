"""A benchmark result as a table (terminal and Markdown) and a PNG chart."""

from __future__ import annotations

from pathlib import Path

from .run import BenchResult


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def rows_table(result: BenchResult) -> list[str]:
    """Every row with its cost: the fidelity columns sit next to the speed of each engine and precision."""
    lines = ["| engine | precision | mode | batch | tokens | threads | tokens/s | ms per call (median, min) | "
             "peak RSS MB | KL mean | top-1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['engine']} | {r['precision']} | {r['mode']} | {r['batch']} | {r['tokens']} | "
                     f"{r['threads']} | {r['tokens_per_s']:.1f} | {r['ms_per_call']:.2f}, {r['ms_per_call_min']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {_number(r.get('kl_mean'), '.2e')} | {_number(r.get('top1'), '.3f')} |")
    return lines


def ratios_table(result: BenchResult) -> list[str]:
    lines = ["| ratio | precision | threads | measured | target | met |", "|---|---|---|---|---|---|"]
    for r in result.ratios:
        target = "" if r.target is None else (">= " if r.higher_is_better else "<= ") + f"{r.target:g}"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        value = f"{r.value:.3g}" if r.name.startswith("kl_") else f"{r.value:.2f}"
        lines.append(f"| {r.name} | {r.precision} | {'' if r.threads is None else r.threads} | {value} | {target} | {met} |")
    return lines


def markdown(result: BenchResult) -> str:
    m = result.machine
    bandwidth = ", ".join(f"{v / 1e9:.1f} GB/s at {k} thread(s)" for k, v in m["memory_read_bytes_per_s"].items())
    lines = ["# rwkv-deploy bench", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; threads measured: {', '.join(map(str, m['threads']))}; memory "
             f"read bandwidth {bandwidth} (measured in this run). Shape: {result.options['shape']}. "
             f"{result.options['rounds']} rounds per measurement, engine order reversed each round. "
             f"Run took {result.seconds:.0f} s.", "", "## Ratios (same run, same machine)", "", *ratios_table(result),
             "", "## Measurements", "", *rows_table(result)]
    if result.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in result.notes]]
    lines += ["", "`tokens`: prefill length T for prefill rows; for decode rows, how many tokens the state had "
              "seen when timing began (0: a fresh state warmed by 3 steps). ms per call: the median round and the fastest. "
              "KL mean / top-1: against the fp32 PyTorch reference, on one fixed token stream fed token by token."]
    return "\n".join(lines) + "\n"


def write_chart(result: BenchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("decode", lambda r: r["mode"] == "decode" and r["tokens"] == 0, "batch", "decode tokens/s"),
              ("prefill", lambda r: r["mode"] == "prefill", "tokens", "prefill tokens/s (one sequence)"),
              ("context", lambda r: r["mode"] == "decode" and r["tokens"] > 0, "tokens", "ms per token at context")]
    for ax, (_, keep, axis, title) in zip(axes, panels):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in filter(keep, result.rows):
            value = r["ms_per_call"] if title.startswith("ms") else r["tokens_per_s"]
            series.setdefault(f"{r['engine']} {r['precision']} {r['threads']}t", []).append((r[axis], value))
        for label, points in series.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    threads = ", ".join(map(str, result.machine["threads"]))
    fig.suptitle(f"rwkv-deploy bench, shape {result.options['shape']}, {threads} thread(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
