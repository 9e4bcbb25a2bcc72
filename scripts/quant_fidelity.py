"""Fidelity of a quantization setting, the way `rwkv-deploy bench` measures it: quantize an exported fp32 step
graph with a QuantConfig, feed bench's fixed token stream one token at a time, and print KL(fp32 reference ||
variant) mean/max and top-1 agreement. This is how the table in docs/bench.md ("Quantization choices") was
made; rwkv.cpp's files can be measured on the same stream for comparison.

    python scripts/quant_fidelity.py STEP.onnx CKPT.pth --precision int8
    python scripts/quant_fidelity.py STEP.onnx CKPT.pth --config '{"bits": 4, "block_size": 16, ...}' --out q.onnx
    python scripts/quant_fidelity.py STEP.onnx CKPT.pth --rwkvcpp FILE.bin --rwkvcpp-lib librwkv.so
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def graph_logits(graph: Path, tokens: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    from rwkv_deploy.runtime.onnx_backend import session_options

    session = ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])
    token_input, *state_inputs = session.get_inputs()
    state = {i.name: np.zeros([1 if isinstance(d, str) else d for d in i.shape], np.float32) for i in state_inputs}
    outputs, out = [o.name for o in session.get_outputs()], []
    for token in tokens:
        logits, *values = session.run(outputs, {token_input.name: np.array([token], np.int64), **state})
        out.append(logits[0])
        state = {i.name: v for i, v in zip(state_inputs, values)}
    return np.stack(out)


def main(argv: list[str]) -> int:
    from rwkv_deploy.bench import fidelity
    from rwkv_deploy.bench.engines import RwkvCppEngine, TorchReferenceEngine  # the streams bench measures
    from rwkv_deploy.export.quantize import QUANT_CONFIGS, QuantConfig, quantize_onnx_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path, help="an exported fp32 step graph (.onnx)")
    parser.add_argument("checkpoint", type=Path, help="its checkpoint, for the fp32 reference")
    parser.add_argument("--precision", choices=sorted(QUANT_CONFIGS), help="quantize with this precision's settings")
    parser.add_argument("--config", help="QuantConfig fields as JSON (overrides and range_search as lists)")
    parser.add_argument("--rwkvcpp", type=Path, help="measure this rwkv.cpp model file instead")
    parser.add_argument("--rwkvcpp-lib", type=Path, help="librwkv.so, with --rwkvcpp")
    parser.add_argument("--out", type=Path, help="keep the quantized graph here (default: a temporary file)")
    parser.add_argument("--tokens", type=int, default=128, help="length of the stream (bench's default 128)")
    parser.add_argument("--seed", type=int, default=0, help="the stream's seed (bench's --seed)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.precision, args.config, args.rwkvcpp)) != 1:
        parser.error("give one of --precision, --config, --rwkvcpp")

    import onnx

    vocab = next(t for t in onnx.load(str(args.graph), load_external_data=False).graph.initializer
                 if t.name.endswith("emb.weight")).dims[0]
    tokens = fidelity.token_stream(int(vocab), args.tokens, args.seed)
    reference = TorchReferenceEngine(args.checkpoint, int(vocab), args.seed).stream_logits(tokens)
    if args.rwkvcpp is not None:
        if args.rwkvcpp_lib is None:
            parser.error("--rwkvcpp needs --rwkvcpp-lib")
        engine = RwkvCppEngine(args.rwkvcpp_lib, args.rwkvcpp, args.threads, int(vocab), args.seed)
        logits = engine.stream_logits(tokens)
    else:
        if args.precision:
            config = QUANT_CONFIGS[args.precision]
        else:
            fields = json.loads(args.config)
            fields["overrides"] = tuple(tuple(o) for o in fields.get("overrides", ()))
            fields["range_search"] = tuple(fields.get("range_search", (1.0,)))
            config = QuantConfig(**fields)
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out or Path(tmp) / "quantized.onnx"
            quantize_onnx_file(args.graph, out, args.precision or "int8", config=config, external_data=True)
            logits = graph_logits(out, tokens, args.threads)
    print(json.dumps(fidelity.compare(reference, logits)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
