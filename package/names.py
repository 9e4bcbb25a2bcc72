"""Every name the package format fixes: graph inputs and outputs, axes, graph kinds, file names and
format tags. This is the only module that spells them; export writes them, every runtime reads them.

Changing a value here changes format_version 1 for every deployed runtime (Node.js, the browser,
Triton, C++ read the same names from manifest.json or from docs/manifest.md), so treat them as frozen.
"""

from __future__ import annotations

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VALIDATION_DIR = "validation/"  # reports written by `rwkv-deploy validate`; not listed in `files`

# -- graphs ----------------------------------------------------------------------------------------------
STEP_GRAPH = "step"  # token [batch] + state -> logits [batch, vocab] + state
PREFILL_GRAPH = "prefill"  # optional: tokens [batch, T] + state -> logits + state, one call per prompt

TOKEN_INPUT = "token"  # the step graph's token ids, int64 [batch]
PREFILL_TOKENS_INPUT = "tokens"  # the prefill graph's token ids, int64 [batch, T]
LOGITS_OUTPUT = "logits"  # float32 [batch, vocab] (prefill with logits "all": [batch, T, vocab])
STATE_INPUT_PREFIX = "state_in."
STATE_OUTPUT_PREFIX = "state_out."

BATCH_AXIS = "batch"  # the symbolic first axis of every input, output and state entry
MAX_BATCH = 65536  # the largest batch the exported graphs declare
TIME_AXIS = "T"  # the prefill graph's sequence axis
TOKEN_DTYPE = "int64"
LOGITS_DTYPE = "float32"
PREFILL_LOGITS_LAST, PREFILL_LOGITS_ALL = "last", "all"  # which positions the prefill graph returns logits for
PREFILL_LOGITS = (PREFILL_LOGITS_LAST, PREFILL_LOGITS_ALL)


def state_input(name: str) -> str:
    """The graph input that feeds state tensor `name`."""
    return STATE_INPUT_PREFIX + name


def state_output(name: str) -> str:
    """The graph output that returns the new value of state tensor `name`."""
    return STATE_OUTPUT_PREFIX + name


# -- archives (`rwkv-deploy package`) -------------------------------------------------------------------
INDEX_NAME = "PACKAGE.json"
INDEX_FORMAT = "rwkv-deploy-archive"
INDEX_FORMAT_VERSION = 1
ALIGNMENT = 64  # archive member data offsets are multiples of this, so runtimes can map weights in place

# -- state files (`RecurrentState.save`, initial states) ------------------------------------------------
STATE_FILE_FORMAT = "rwkv-deploy-state"
STATE_FILE_VERSION = 1

# -- TensorRT engines (`rwkv-deploy build-engine`) ------------------------------------------------------
ENGINES_DIR = "engines"  # engines/<graph>.plan and engines/<graph>.json; manifest.json's `engines` is keyed by graph
ENGINE_PLAN_SUFFIX = ".plan"
ENGINE_INFO_SUFFIX = ".json"
ENGINE_FORMAT = "rwkv-deploy-tensorrt-engine"
ENGINE_FORMAT_VERSION = 2

# -- CPU target graphs (`rwkv-deploy build-cpu`) ----------------------------------------------------------
CPU_DIR = "cpu"  # cpu/<graph>.onnx and cpu/<graph>.onnx.data; manifest.json's `cpu_graphs` is keyed by graph
# rwkv-deploy's CPU operator library (runtime/native/); version 2 added BlockQuantMatMul and Fp32MatMul, 3
# Rwkv7WkvStep
CPU_OPS_DOMAIN = "ai.rwkv_deploy.cpu"
CPU_OPS_VERSION = 3
