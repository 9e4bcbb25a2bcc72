"""Shared test helpers: random BlinkDL-format checkpoints and the `rwkv` package oracle."""
