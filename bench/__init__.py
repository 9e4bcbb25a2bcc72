"""`rwkv-deploy bench`: speed of exported packages measured side by side with the PyTorch reference and
BlinkDL's `rwkv` package, in one run, as ratios (see docs/bench.md)."""
