"""Write the bundled model's card: loss-curve figure and MODEL_CARD.md from the training history.

    python scripts/model_card.py models/bundled/rwkv7-pystdlib-tiny.pth
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from rwkv_deploy.models import load_model  # noqa: E402
from rwkv_deploy.models.inspection import summarize_checkpoint  # noqa: E402

GREEDY_PROMPTS = ["def read", "import ", "raise ", "class Path"]
SAMPLED_PROMPTS = ["def ", "class "]


def continue_text(model, prompt: str, n: int = 160, temperature: float = 0.0, seed: int = 0) -> str:
    """Greedy (temperature 0) or sampled continuation with the reference model."""
    gen = torch.Generator().manual_seed(seed)
    state = model.init_state(1)
    out = []
    with torch.no_grad():
        logits, state = model(torch.tensor([list(prompt.encode())]), state)
        logits = logits[0, -1]
        for _ in range(n):
            if temperature == 0:
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
            out.append(token)
            logits, state = model.step(torch.tensor([token]), state)
            logits = logits[0]
    return prompt + bytes(out).decode("utf-8", errors="replace")


def main(ckpt_path: str) -> None:
    ckpt = Path(ckpt_path)
    record = json.loads(Path(str(ckpt) + ".history.json").read_text())
    summary, history = record["summary"], record["history"]
    evals = [r for r in history if "held_out_loss" in r]

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["tokens"] / 1e6 for r in history], [r["loss"] for r in history], lw=0.8, alpha=0.6, label="training batch loss")
    ax.plot([r["tokens"] / 1e6 for r in evals], [r["held_out_loss"] for r in evals], "o-", ms=3, label="held-out loss (sched.py)")
    ax.set_xlabel("training tokens (millions of bytes)")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("rwkv7-pystdlib-tiny: RWKV-7, byte-level, Python stdlib sources")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    figure = ckpt.with_name("loss_curve.png")
    fig.savefig(figure)

    info = summarize_checkpoint(ckpt)
    model = load_model(ckpt)
    greedy = "\n\n".join(f"```python\n{continue_text(model, p, 100)}\n```" for p in GREEDY_PROMPTS)
    sampled = "\n\n".join(f"```python\n{continue_text(model, p, 300, 0.7, seed)}\n```"
                            for seed, p in enumerate(SAMPLED_PROMPTS))
    a = summary["args"]
    card = f"""# rwkv7-pystdlib-tiny

A tiny RWKV-7 ("x070", Goose) language model trained by `scripts/train_bundled.py` so that rwkv-deploy can
show its whole pipeline before a user has a model of their own. It writes Python-looking code; it is a demo,
not a useful model.

| | |
|---|---|
| architecture | RWKV-7, {info.n_layer} layers, embedding {info.n_embd}, {info.n_head} heads of {info.head_size}, FFN {info.ffn_size}, LoRA ranks {info.lora} |
| vocabulary | 256 (one token per byte, tokenizer `bytes`) |
| parameters | {info.parameters:,} |
| stored as | BlinkDL `.pth` key layout, {info.stored_dtype} ({ckpt.stat().st_size / 1e6:.2f} MB) |
| training data | {summary['corpus_bytes']:,} bytes: the sources of {len(a.get('modules') or []) or 'the listed'} pure-Python standard-library modules of CPython {summary['python']} (PSF licence), module list in `scripts/train_bundled.py`; `sched.py` held out |
| training | {summary['steps']} steps of {a['batch']} x {a['ctx_len']} bytes ({summary['steps'] * a['batch'] * a['ctx_len'] / 1e6:.1f} M bytes), AdamW, lr {a['lr']} -> {a['lr_final']} cosine, seed {a['seed']}, {summary['seconds'] / 60:.0f} min on 2 CPU cores |
| final loss | training batch {summary['final_train_loss']:.3f} nats/byte; held-out {summary['held_out_loss']:.3f} nats/byte ({summary['held_out_loss'] / 0.6931:.2f} bits/byte) |

The run had a time budget (`--minutes {a['minutes']:.0f}`, one PyTorch thread), so its cosine schedule
followed the clock. To reproduce it step for step, replay the recorded learning rates (same seed, same data;
the corpus is read from the running CPython's standard library, so use CPython {summary['python']}):

    TRAIN_THREADS=1 python scripts/train_bundled.py --out rwkv7-pystdlib-tiny.pth --replay models/bundled/rwkv7-pystdlib-tiny.pth.history.json
    python scripts/model_card.py rwkv7-pystdlib-tiny.pth

![loss curve](loss_curve.png)

## Greedy samples (reference PyTorch model)

Greedy decoding of a model this small falls into loops quickly, as these show; the text is recognisably
Python from the standard library.

{greedy}

## Sampled (temperature 0.7)

{sampled}
"""
    ckpt.with_name("MODEL_CARD.md").write_text(card)


if __name__ == "__main__":
    main(sys.argv[1])
