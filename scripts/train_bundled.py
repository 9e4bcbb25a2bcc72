"""Train the bundled tiny RWKV-7 model on Python standard-library sources (byte tokens).

Reproducible: fixed seed, fixed module list, single-threaded-deterministic ops. It uses the reference
model's own `forward` with autograd, so the bundled checkpoint is trained by exactly the math that
rwkv-deploy exports. Never run in CI (minutes of CPU); tests run it for a few steps only.

    python scripts/train_bundled.py --out models/bundled/rwkv7-pystdlib-tiny.pth --minutes 25
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

from rwkv_deploy.models.config import ModelConfig
from rwkv_deploy.models.reference.v7 import RWKV7

# Pure-Python standard-library modules (PSF licence), in a fixed order. The last one is held out.
CORPUS_MODULES = (
    "argparse textwrap string csv difflib shutil tempfile pathlib enum dataclasses functools heapq bisect "
    "calendar configparser fractions glob gettext inspect os random statistics subprocess threading typing "
    "zipfile abc ast base64 cmd codecs contextlib copy dis fnmatch getopt gzip hashlib hmac imaplib locale "
    "mailbox netrc numbers operator optparse pickle platform plistlib pprint queue quopri reprlib sched "
    "secrets selectors shelve shlex smtplib socket socketserver stat struct tarfile timeit token tokenize "
    "trace traceback types uuid warnings wave weakref webbrowser zipapp json/__init__ json/decoder "
    "json/encoder collections/__init__ logging/__init__ logging/handlers email/message email/utils "
    "http/client http/server urllib/parse urllib/request unittest/case asyncio/base_events asyncio/tasks "
    "concurrent/futures/_base importlib/__init__ xml/dom/minidom"
).split()
HELD_OUT = "sched"


def corpus(stdlib: Path | None = None, modules: tuple[str, ...] = tuple(CORPUS_MODULES)) -> tuple[bytes, bytes]:
    """(training bytes, held-out bytes) from the running Python's standard library."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    train = [(root / f"{m}.py").read_bytes() for m in modules if m != HELD_OUT]
    held = (root / f"{HELD_OUT}.py").read_bytes() if HELD_OUT in modules else train[-1]
    return b"\n".join(train), held


def tiny_config(n_layer: int = 4, n_embd: int = 128, head_size: int = 16) -> ModelConfig:
    return ModelConfig(version="7", n_layer=n_layer, n_embd=n_embd, vocab_size=256, ffn_size=4 * n_embd,
                       att_size=n_embd, n_head=n_embd // head_size, head_size=head_size,
                       lora={"w": 32, "a": 32, "v": 16, "g": 32})


def init_weights(model: RWKV7, gen: torch.Generator) -> None:
    """An RWKV-7 style initialisation: token-shift ratios by depth, decay speeds spread across channels."""
    cfg = model.config
    c, n_layer = cfg.n_embd, cfg.n_layer
    ddd = torch.arange(c, dtype=torch.float32) / c

    def uniform(shape: tuple[int, ...], scale: float) -> torch.Tensor:
        return (torch.rand(shape, generator=gen) * 2 - 1) * scale

    def ortho(rows: int, cols: int, scale: float) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen))
        return (q if rows >= cols else q.T)[:rows, :cols] * scale

    with torch.no_grad():
        model.emb.weight.copy_(uniform((cfg.vocab_size, c), 1e-4))
        model.head.weight.copy_(ortho(cfg.vocab_size, c, 0.5 * math.sqrt(cfg.vocab_size / c)) / math.sqrt(cfg.vocab_size))
        for i, block in enumerate(model.blocks):
            r0 = i / max(n_layer - 1, 1)
            r1 = 1.0 - i / n_layer
            att, ffn = block.att, block.ffn
            for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
                getattr(att, name).copy_(1.0 - torch.pow(ddd, p * r1))
            n = torch.arange(c, dtype=torch.float32)
            att.w0.copy_(-7 + 5 * (n / (c - 1)) ** (0.85 + r0 ** 0.5) + 0.5)
            att.a0.zero_()
            att.k_k.fill_(0.85)
            att.k_a.fill_(1.0)
            att.r_k.zero_()
            for lo, hi in (("w1", "w2"), ("a1", "a2"), ("g1", "g2")) + ((("v1", "v2"),) if i > 0 else ()):
                getattr(att, lo).zero_()
                getattr(att, hi).copy_(ortho(*getattr(att, hi).shape, 0.1))
            if i > 0:
                att.v0.fill_(1.0)
            for lin in (att.receptance, att.key, att.value):
                lin.weight.copy_(uniform(lin.weight.shape, 0.5 / math.sqrt(c)))
            att.output.weight.zero_()
            att.ln_x.weight.fill_(((1 + i) / n_layer) ** 0.7)
            att.ln_x.bias.zero_()
            ffn.x_k.copy_(1.0 - torch.pow(ddd, r1 ** 4))
            ffn.key.weight.copy_(uniform(ffn.key.weight.shape, 0.5 / math.sqrt(c)))
            ffn.value.weight.zero_()


def to_checkpoint(model: RWKV7) -> dict[str, torch.Tensor]:
    """Model parameters -> BlinkDL x070 .pth layout ([1,1,C] vectors, unused layer-0 v0/v1/v2 like released files)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        t = t.detach().float().clone()
        name = key.rsplit(".", 1)[-1]
        if t.dim() == 1 and (name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")):
            t = t.reshape(1, 1, -1)
        out[key] = t
    c, dv = model.config.n_embd, model.config.lora["v"]
    out["blocks.0.att.v0"] = torch.ones(1, 1, c)
    out["blocks.0.att.v1"] = torch.zeros(c, dv)
    out["blocks.0.att.v2"] = torch.zeros(dv, c)
    return out


def replayed_learning_rates(history_path: str) -> list[float]:
    """Per-step learning rates of a recorded run: a --minutes run's schedule depends on the machine's
    speed, so replaying its recorded rates (same seed and data) is what reproduces it step for step."""
    history = json.loads(Path(history_path).read_text())["history"]
    return [row["lr"] for row in history]


def save_checkpoint(model: RWKV7, out: Path, dtype: str) -> None:
    """Write atomically (temporary file, then rename) in the requested storage dtype."""
    ckpt = to_checkpoint(model)
    if dtype == "bf16":
        ckpt = {k: v.to(torch.bfloat16) for k, v in ckpt.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)


def batch_loss(model: RWKV7, data: torch.Tensor, starts: torch.Tensor, ctx_len: int) -> torch.Tensor:
    idx = starts.unsqueeze(1) + torch.arange(ctx_len + 1)
    chunk = data[idx]
    logits, _ = model(chunk[:, :-1], model.init_state(chunk.shape[0]))
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))


@torch.no_grad()
def held_out_loss(model: RWKV7, data: torch.Tensor, ctx_len: int, n: int = 8) -> float:
    starts = torch.linspace(0, len(data) - ctx_len - 2, n).long()
    return float(batch_loss(model, data, starts, ctx_len))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_bytes, held_bytes = corpus(args.stdlib, tuple(args.modules) if args.modules else tuple(CORPUS_MODULES))
    data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8).long()
    held = torch.frombuffer(bytearray(held_bytes), dtype=torch.uint8).long()

    cfg = tiny_config(args.n_layer, args.n_embd, args.head_size)
    model = RWKV7(cfg)
    init_weights(model, gen)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    history: list[dict] = []
    replay = replayed_learning_rates(args.replay) if args.replay else None
    if replay is not None:
        args.steps, args.minutes = len(replay), 0.0
    t0 = time.time()
    deadline = t0 + args.minutes * 60 if args.minutes else None
    step = 0
    while step < args.steps and (deadline is None or time.time() < deadline):
        progress = step / args.steps if deadline is None else (time.time() - t0) / (args.minutes * 60)
        lr = args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * min(progress, 1.0)))
        warm = min(1.0, (step + 1) / 50)
        if replay is not None:  # the exact learning rates of a recorded (time-budgeted) run
            lr, warm = replay[step], 1.0
        for group in opt.param_groups:
            group["lr"] = lr * warm
        starts = torch.randint(0, len(data) - args.ctx_len - 2, (args.batch,), generator=gen)
        loss = batch_loss(model, data, starts, args.ctx_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        row = {"step": step, "tokens": step * args.batch * args.ctx_len, "loss": loss.item(),
               "lr": lr * warm, "seconds": round(time.time() - t0, 1)}
        if step % args.eval_every == 0 or step == 1:
            row["held_out_loss"] = held_out_loss(model, held, args.ctx_len)
            print(json.dumps(row), flush=True)
            if args.save_every_eval:
                save_checkpoint(model, Path(args.out), args.dtype)
        history.append(row)

    model.eval()
    out = Path(args.out)
    save_checkpoint(model, out, args.dtype)
    summary = {"steps": step, "seconds": round(time.time() - t0, 1), "final_train_loss": history[-1]["loss"],
               "held_out_loss": held_out_loss(model, held, args.ctx_len), "config": cfg.to_dict(),
               "args": {k: v for k, v in vars(args).items() if k != "modules"}, "python": sys.version.split()[0],
               "corpus_bytes": len(train_bytes), "held_out_module": HELD_OUT}
    Path(str(out) + ".history.json").write_text(json.dumps({"summary": summary, "history": history}))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: run --steps)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-final", type=float, default=1e-4)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--head-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every-eval", action="store_true", help="also write the checkpoint at every evaluation")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--replay", default=None, help="history.json of a recorded run: replay its per-step learning rates")
    p.add_argument("--stdlib", default=None, help="standard-library folder (default: this Python's)")
    p.add_argument("--modules", nargs="*", default=None, help="override the corpus module list")
    return p.parse_args(argv)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    print(json.dumps(train(parse_args())))
