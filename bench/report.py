"""A benchmark result as a table (terminal and Markdown) and a PNG chart."""

from __future__ import annotations

from pathlib import Path

from .run import BenchResult


def rows_table(result: BenchResult) -> list[str]:
    lines = ["| engine | precision | mode | batch | tokens | tokens/s | ms per call | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['engine']} | {r['precision']} | {r['mode']} | {r['batch']} | {r['tokens']} | "
                     f"{r['tokens_per_s']:.1f} | {r['ms_per_call']:.2f} | {r['peak_rss_mb']:.0f} |")
    return lines


def ratios_table(result: BenchResult) -> list[str]:
    lines = ["| ratio | precision | measured | target | met |", "|---|---|---|---|---|"]
    for r in result.ratios:
        target = "" if r.target is None else (">= " if r.higher_is_better else "<= ") + f"{r.target:g}"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.name} | {r.precision} | {r.value:.2f} | {target} | {met} |")
    return lines


def markdown(result: BenchResult) -> str:
    m = result.machine
    lines = ["# rwkv-deploy bench", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads used; memory read bandwidth "
             f"{m['memory_read_bytes_per_s'] / 1e9:.1f} GB/s (measured in this run). Shape: {result.options['shape']}. "
             f"Run took {result.seconds:.0f} s.", "", "## Ratios (same run, same machine)", "", *ratios_table(result),
             "", "## Measurements", "", *rows_table(result)]
    if result.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in result.notes]]
    lines += ["", "`tokens`: prefill length T for prefill rows; for decode rows, how many tokens the state had "
              "seen when timing began (0: a fresh state warmed by 3 steps)."]
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
            series.setdefault(f"{r['engine']} {r['precision']}", []).append((r[axis], value))
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
    fig.suptitle(f"rwkv-deploy bench, shape {result.options['shape']}, {result.machine['threads']} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
