"""rwkv-deploy: export RWKV checkpoints to ONNX / TensorRT and run them without PyTorch."""

__version__ = "0.1.0"
