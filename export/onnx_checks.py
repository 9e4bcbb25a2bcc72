"""The ONNX checks every exported file passes before it is allowed into a package."""

from __future__ import annotations

from pathlib import Path

import onnx

from rwkv_deploy.errors import RwkvDeployError


class OnnxCheckError(RwkvDeployError):
    exit_code = 1


def check_onnx_file(path: str | Path) -> None:
    """Full checker plus strict shape inference; by path so that external data works beyond 2 GB."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxCheckError(f"{path}: exported graph fails ONNX checks ({str(exc).splitlines()[0]})") from None
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


def check_opset(path: str | Path, opset: int) -> None:
    """The graph at `path` (weights external: cheap to read) uses exactly the default-domain opset asked for:
    the exporter may silently write another one, and the manifest must not claim what the graph is not."""
    model = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise OnnxCheckError(f"--opset {opset}: the exporter wrote a graph of opset {got}; this PyTorch converts "
                             f"to opset {got} here, so export with --opset {got}")
