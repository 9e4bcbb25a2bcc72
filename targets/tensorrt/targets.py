"""Build targets of TensorRT for RTX: the compute capabilities a plan is compiled for.

RTX builds ahead of time, without a GPU, for the targets set with `IBuilderConfig.set_compute_capability`
(the `ComputeCapability` enum: SM75, SM80, SM86, SM89, SM120, SM121 in 1.7; no SM90 or SM100: Hopper and
data-centre Blackwell are not RTX targets). With none set, it builds for its portable default.

What a plan was built for is also in its header. Observed on RTX 1.7.1.116 (not documented by NVIDIA, so
it is read only when the header looks exactly as observed): bytes 0-3 and 28-31 are b"vtrt", bytes 24-27
the version (major, minor, patch, build), bytes 32-39 a little-endian mask of targets, one bit each for
7.5, 8.0, 8.6, 8.9, 12.0, 12.1 and "newer than 12.0" (the names the library prints in that order). The
portable default was 0x7e: 8.0, 8.6, 8.9, 12.0, 12.1 and newer.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from types import ModuleType

from rwkv_deploy.errors import RefusedError

PLAN_MAGIC = b"vtrt"
HEADER_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1", ">12.0")  # bit 0, 1, ...
_CAPABILITY = re.compile(r"^(?:sm_?)?(\d{1,2})\.?(\d)$", re.IGNORECASE)


class TargetError(RefusedError, ValueError):
    """A --compute-capability that the installed TensorRT cannot build for."""


def parse_capability(text: str) -> str:
    """'8.6', '86', 'sm86', 'sm_86', '12.0', '120' -> '8.6' / '12.0'."""
    match = _CAPABILITY.match(text.strip())
    if not match:
        raise TargetError(f"--compute-capability {text!r}: expected MAJOR.MINOR, e.g. 8.6 or 12.0")
    return f"{int(match.group(1))}.{match.group(2)}"


def rtx_capabilities(trt: ModuleType) -> dict[str, object]:
    """'8.6' -> trt.ComputeCapability.SM86, for every concrete target of this RTX (not NONE/CURRENT)."""
    found = {}
    for name, member in trt.ComputeCapability.__members__.items():
        if name.startswith("SM") and name[2:].isdigit():
            digits = name[2:]
            found[f"{int(digits[:-1])}.{digits[-1]}"] = member
    return found


def rtx_targets(trt: ModuleType, texts: Sequence[str]) -> tuple[str, ...]:
    """The --compute-capability options as targets of this RTX, in order, without repeats. An unsupported
    one is one TargetError line naming what this RTX supports."""
    supported = rtx_capabilities(trt)
    targets: list[str] = []
    for text in texts:
        capability = parse_capability(text)
        if capability not in supported:
            raise TargetError(f"--compute-capability {text}: TensorRT for RTX {getattr(trt, '__version__', '?')} "
                              f"cannot build for compute capability {capability} (it builds for "
                              f"{', '.join(sorted(supported, key=_order))}; Hopper 9.0 and 10.x GPUs need full "
                              "TensorRT: --trt tensorrt on that GPU)")
        if capability not in targets:
            targets.append(capability)
    return tuple(targets)


def _order(capability: str) -> tuple[int, int]:
    major, minor = capability.split(".")
    return int(major), int(minor)


def plan_header_targets(plan: bytes | memoryview, version: str) -> tuple[str, ...] | None:
    """The targets an RTX plan's header names, or None when the header is not the one observed for
    `version` (another RTX release may lay it out differently)."""
    head = bytes(memoryview(plan)[:40])
    if len(head) < 40 or head[:4] != PLAN_MAGIC or head[28:32] != PLAN_MAGIC:
        return None
    try:
        expected = tuple(int(p) for p in version.split(".")[:4])
    except ValueError:
        return None
    if tuple(head[24:24 + len(expected)]) != tuple(v & 0xFF for v in expected):
        return None
    (mask,) = struct.unpack_from("<Q", head, 32)
    if mask == 0 or mask >> len(HEADER_TARGETS):
        return None
    return tuple(t for bit, t in enumerate(HEADER_TARGETS) if mask >> bit & 1)


