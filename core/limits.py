"""Plausibility caps: the most any untrusted declaration may make us read or allocate.

Every size that comes from a file someone else made (a manifest's shapes, an archive member's size, a state
file's header, a checkpoint's tensor shapes) is checked against these before anything is allocated or read,
so a small crafted file cannot make a command use gigabytes. The defaults leave room for every real RWKV
model (the largest, 14 B parameters, has 61 layers and 40 MB of state per sequence); a bigger real model
raises a cap with the command's flag (`--max-params`) or the environment variable named below.
"""

from __future__ import annotations

import os

from rwkv_deploy.errors import RefusedError


class LimitError(RefusedError):
    """A declared size beyond a plausibility cap: the input is refused before anything is allocated."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    text = raw.strip().replace("_", "")
    try:
        value = int(text) if text.isdigit() else float(text)
    except ValueError:
        raise LimitError(f"environment variable {name}={raw[:40]!r}: expected a whole number") from None
    if not (1 <= value <= 2**62 and value == int(value)):  # nan, inf, 1e400 and 2.5 fail here too
        raise LimitError(f"environment variable {name}={raw[:40]!r}: expected a whole number from 1 to 2**62")
    return int(value)


MIB = 1 << 20
GIB = 1 << 30

JSON_BYTES = 4 * MIB  # manifest.json, PACKAGE.json, engine.json, a state file's header (a real manifest: < 100 KB)
JSON_DEPTH = 32  # nesting of objects and arrays in those files (a manifest needs 4)
MAX_PARAMS_ENV = "RWKV_DEPLOY_MAX_PARAMS"
STATE_BYTES_ENV = "RWKV_DEPLOY_MAX_STATE_BYTES"
DEFAULT_MAX_PARAMS = 50_000_000_000  # parameters a checkpoint (or `bench --shape`) may declare
DEFAULT_STATE_BYTES = 4 * GIB  # recurrent state per sequence a manifest or state file may declare
MAX_VOCAB = 1 << 24
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20
PROMPT_BYTES = 16 * MIB  # `generate --prompt-file` / stdin: about 4 M tokens, already hours of prefill on a CPU


def max_params() -> int:
    return _env_int(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS)


def max_state_bytes() -> int:
    return _env_int(STATE_BYTES_ENV, DEFAULT_STATE_BYTES)
