"""Deployment targets: what turns a finished, verified package into an artifact for one platform (TensorRT
engines, Triton model repositories). Targets read packages only: no PyTorch, no reference models, nothing from
export/ (import contracts in pyproject.toml); `pip install "rwkv-deploy[targets]"` is all they need."""
