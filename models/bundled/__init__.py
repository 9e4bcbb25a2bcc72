"""The small RWKV-7 checkpoint that ships with rwkv-deploy (see MODEL_CARD.md here)."""

from pathlib import Path

BUNDLED_CHECKPOINT = Path(__file__).with_name("rwkv7-pystdlib-tiny.pth")


def bundled_checkpoint() -> Path:
    return BUNDLED_CHECKPOINT
