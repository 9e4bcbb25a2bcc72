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
