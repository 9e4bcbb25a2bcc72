"""The ratios the project's speed and fidelity targets are stated in, computed from the rows of one run (pure
functions).

Each speed target compares two rows measured in the same run, at the same thread count, on the same machine, so
machine speed cancels. Fidelity targets compare KL means on the same token stream. The targets were set for
RWKV-7 at the G1 0.1B shape on a 2-core machine; at other shapes they are reported the same way but mean less."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import DEPLOY, DEPLOY_CPU, DEPLOY_CPU_SPIN, DEPLOY_SPIN, GENAI, LLAMACPP, RWKV_PACKAGE, RWKVCPP, TORCH_REFERENCE

DECODE_VS_RWKV_PACKAGE = {"fp32": 1.7, "int8": 3.0, "int4": 4.0}
BATCH16_VS_BATCH1 = 8.0
PREFILL64_VS_DECODE = 10.0
PREFILL64_VS_RWKV_PACKAGE = 2.0
LONG_CONTEXT_SLOWDOWN = 1.10
BANDWIDTH_FRACTION = 0.8
# our precision -> rwkv.cpp's counterpart, and how much faster than it decode at batch 1 must be
RWKVCPP_COUNTERPART = {"fp32": "FP32", "fp16": "FP16", "int8": "Q8_0", "int5": "Q5_1", "int4": "Q4_0"}
DECODE_VS_RWKVCPP = {"fp32": 1.0, "fp16": 1.0, "int8": 1.2, "int5": 1.0, "int4": 1.2}
PREFILL_VS_RWKVCPP = 1.0
KL_VS_RWKVCPP = 1.0  # our KL mean over rwkv.cpp's counterpart's, on the same stream: at most equal
# our precision -> llama.cpp's counterpart; decode at batch 1 must be at least as fast, at no worse KL
LLAMACPP_COUNTERPART = {"fp32": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
DECODE_VS_LLAMACPP = 1.0
KL_VS_LLAMACPP = 1.0
GENAI_DECODE_COST = 1.1  # GenAI's time per token over our runtime's, on the same package


@dataclass(frozen=True)
class Ratio:
    name: str
    precision: str
    value: float
    target: float | None  # None: reported, no target
    higher_is_better: bool
    meaning: str
    threads: int | None = None  # the thread count both rows were measured at (None: not a speed)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def find(rows: list[dict[str, Any]], engine: str, mode: str, batch: int, tokens: int,
         precision: str | None = None, threads: int | None = None) -> dict[str, Any] | None:
    for row in rows:
        if (row["engine"], row["mode"], row["batch"], row["tokens"]) == (engine, mode, batch, tokens) and \
                (precision is None or row["precision"] == precision) and \
                (threads is None or row.get("threads") == threads):
            return row
    return None


def compute_ratios(rows: list[dict[str, Any]], decode_weight_bytes: dict[str, int], bandwidth: dict[int, float],
                   longest_context: int, shortest_context: int) -> list[Ratio]:
    ratios: list[Ratio] = []
    precisions = list(dict.fromkeys(r["precision"] for r in rows if r["engine"] == DEPLOY))
    thread_counts = sorted({r["threads"] for r in rows if r.get("threads") is not None})
    prefill_lengths = sorted({r["tokens"] for r in rows if r["mode"] == "prefill"})

    for threads in thread_counts:
        def row(engine: str, mode: str, batch: int, tokens: int, precision: str | None = None) -> dict | None:
            return find(rows, engine, mode, batch, tokens, precision, threads)

        def add(name: str, precision: str, num: dict | None, den: dict | None, target: float | None, meaning: str,
                higher: bool = True, invert: bool = False) -> None:
            if num is None or den is None:
                return
            value = den["tokens_per_s"] / num["tokens_per_s"] if invert else num["tokens_per_s"] / den["tokens_per_s"]
            ratios.append(Ratio(name, precision, value, target, higher, meaning, threads))

        package_decode = row(RWKV_PACKAGE, "decode", 1, 0)
        package_prefill = row(RWKV_PACKAGE, "prefill", 1, 64)
        for p in precisions:
            decode1 = row(DEPLOY, "decode", 1, 0, p)
            cpu1 = row(DEPLOY_CPU, "decode", 1, 0, p)  # the CPU step graph (rwkv-deploy's CPU operators)
            add("decode_b1_vs_rwkv_package", p, decode1, package_decode, DECODE_VS_RWKV_PACKAGE.get(p),
                "decode tokens/s at batch 1, over the rwkv package's (cpu fp32)")
            counterpart = RWKVCPP_COUNTERPART.get(p)
            if counterpart:
                theirs = row(RWKVCPP, "decode", 1, 0, counterpart)
                add("decode_b1_vs_rwkvcpp", p, decode1, theirs, DECODE_VS_RWKVCPP[p],
                    f"decode tokens/s at batch 1, over rwkv.cpp {counterpart}'s")
                add("decode_b1_spinning_vs_rwkvcpp", p, row(DEPLOY_SPIN, "decode", 1, 0, p), theirs,
                    DECODE_VS_RWKVCPP[p], f"decode tokens/s at batch 1 with spin-waiting threads (as rwkv.cpp's "
                    f"wait), over rwkv.cpp {counterpart}'s")
                add("cpu_decode_b1_vs_rwkvcpp", p, cpu1, theirs, DECODE_VS_RWKVCPP[p],
                    f"decode tokens/s at batch 1 of the CPU step graph, over rwkv.cpp {counterpart}'s")
                add("cpu_decode_b1_spinning_vs_rwkvcpp", p, row(DEPLOY_CPU_SPIN, "decode", 1, 0, p), theirs,
                    DECODE_VS_RWKVCPP[p], f"decode tokens/s at batch 1 of the CPU step graph with spin-waiting "
                    f"threads, over rwkv.cpp {counterpart}'s")
                for length in prefill_lengths:
                    add(f"prefill{length}_vs_rwkvcpp", p, row(DEPLOY, "prefill", 1, length, p),
                        row(RWKVCPP, "prefill", 1, length, counterpart), PREFILL_VS_RWKVCPP,
                        f"prefill tokens/s at T={length} over rwkv.cpp {counterpart}'s sequence mode")
            counterpart = LLAMACPP_COUNTERPART.get(p)
            if counterpart:
                theirs = row(LLAMACPP, "decode", 1, 0, counterpart)
                add("decode_b1_vs_llamacpp", p, decode1, theirs, DECODE_VS_LLAMACPP,
                    f"decode tokens/s at batch 1, over llama.cpp {counterpart}'s")
                add("decode_b1_spinning_vs_llamacpp", p, row(DEPLOY_SPIN, "decode", 1, 0, p), theirs,
                    DECODE_VS_LLAMACPP, f"decode tokens/s at batch 1 with spin-waiting threads (as llama.cpp's "
                    f"wait), over llama.cpp {counterpart}'s")
                add("cpu_decode_b1_vs_llamacpp", p, cpu1, theirs, DECODE_VS_LLAMACPP,
                    f"decode tokens/s at batch 1 of the CPU step graph, over llama.cpp {counterpart}'s")
                add("cpu_decode_b1_spinning_vs_llamacpp", p, row(DEPLOY_CPU_SPIN, "decode", 1, 0, p), theirs,
                    DECODE_VS_LLAMACPP, f"decode tokens/s at batch 1 of the CPU step graph with spin-waiting "
                    f"threads, over llama.cpp {counterpart}'s (its threads spin)")
                add("decode_b16_vs_llamacpp", p, row(DEPLOY, "decode", 16, 0, p),
                    row(LLAMACPP, "decode", 16, 0, counterpart), None,
                    f"decode tokens/s at batch 16, over llama.cpp {counterpart}'s 16 parallel sequences")
                for length in prefill_lengths:
                    add(f"prefill{length}_vs_llamacpp", p, row(DEPLOY, "prefill", 1, length, p),
                        row(LLAMACPP, "prefill", 1, length, counterpart), None,
                        f"prefill tokens/s at T={length} over llama.cpp {counterpart}'s (one batch)")
            add("cpu_decode_b1_vs_portable", p, cpu1, decode1, None,
                "decode tokens/s at batch 1 of the CPU step graph (rwkv-deploy's CPU operators) over the portable graph's")
            add("cpu_decode_b16_vs_portable", p, row(DEPLOY_CPU, "decode", 16, 0, p), row(DEPLOY, "decode", 16, 0, p),
                None, "decode tokens/s at batch 16 of the CPU step graph over the portable graph's")
            for length in prefill_lengths:
                add(f"cpu_prefill{length}_vs_portable", p, row(DEPLOY_CPU, "prefill", 1, length, p),
                    row(DEPLOY, "prefill", 1, length, p), None,
                    f"prefill tokens/s at T={length} of the CPU prefill graph over the portable graph's")
            genai = row(GENAI, "decode", 1, 0, p)
            add("genai_decode_b1_cost", p, decode1, genai, GENAI_DECODE_COST,
                "ONNX Runtime GenAI's time per token at batch 1 over our runtime's (its threads spin, ours do not)",
                higher=False)
            add("genai_decode_b1_cost_vs_spinning", p, row(DEPLOY_SPIN, "decode", 1, 0, p), genai, GENAI_DECODE_COST,
                "ONNX Runtime GenAI's time per token at batch 1 over our runtime's with spin-waiting threads (as "
                "GenAI's wait)", higher=False)
            add("decode_b16_vs_b1", p, row(DEPLOY, "decode", 16, 0, p), decode1, BATCH16_VS_BATCH1,
                "decode tokens/s at batch 16 over batch 1")
            prefill64 = row(DEPLOY, "prefill", 1, 64, p)
            add("prefill64_vs_decode", p, prefill64, decode1, PREFILL64_VS_DECODE,
                "prefill tokens/s at T=64 over step-by-step decode tokens/s (batch 1)")
            add("prefill64_vs_rwkv_package_prefill", p, prefill64, package_prefill, PREFILL64_VS_RWKV_PACKAGE,
                "prefill tokens/s at T=64 over the rwkv package's own prefill at T=64")
            if longest_context and shortest_context and longest_context != shortest_context:
                add(f"context{longest_context}_vs_{shortest_context}_cost", p,
                    row(DEPLOY, "decode", 1, longest_context, p), row(DEPLOY, "decode", 1, shortest_context, p),
                    LONG_CONTEXT_SLOWDOWN, f"per-token decode time at context {longest_context} over "
                    f"{shortest_context}", higher=False, invert=True)
            if decode1 is not None and p in decode_weight_bytes and bandwidth.get(threads, 0) > 0:
                achieved = decode_weight_bytes[p] * decode1["tokens_per_s"]
                ratios.append(Ratio("decode_b1_weight_bandwidth", p, achieved / bandwidth[threads], BANDWIDTH_FRACTION,
                                    True, f"weight bytes read per second at decode batch 1 "
                                    f"({decode_weight_bytes[p] / 2**20:.0f} MiB per token) over the measured memory "
                                    f"read bandwidth", threads))
        torch_decode = row(TORCH_REFERENCE, "decode", 1, 0)
        for p in precisions:
            add("decode_b1_vs_torch_reference", p, row(DEPLOY, "decode", 1, 0, p), torch_decode, None,
                "decode tokens/s at batch 1 over the PyTorch reference's (fp32)")

    for p in precisions:  # fidelity: one value per engine and precision, whatever the threads
        ours = find(rows, DEPLOY, "decode", 1, 0, p)
        theirs = find(rows, RWKVCPP, "decode", 1, 0, RWKVCPP_COUNTERPART.get(p, ""))
        if ours and theirs and ours.get("kl_mean") is not None and theirs.get("kl_mean"):
            target = None if p == "fp32" else KL_VS_RWKVCPP  # fp32: both at float rounding, nothing to trade
            ratios.append(Ratio("kl_mean_vs_rwkvcpp", p, ours["kl_mean"] / theirs["kl_mean"], target, False,
                                f"KL mean against the fp32 reference, over rwkv.cpp {RWKVCPP_COUNTERPART[p]}'s "
                                f"on the same token stream"))
        theirs = find(rows, LLAMACPP, "decode", 1, 0, LLAMACPP_COUNTERPART.get(p, ""))
        if ours and theirs and ours.get("kl_mean") is not None and theirs.get("kl_mean"):
            target = None if p == "fp32" else KL_VS_LLAMACPP
            ratios.append(Ratio("kl_mean_vs_llamacpp", p, ours["kl_mean"] / theirs["kl_mean"], target, False,
                                f"KL mean against the fp32 reference, over llama.cpp {LLAMACPP_COUNTERPART[p]}'s "
                                f"on the same token stream"))
    return ratios
