"""The TensorRT commands (`check-trt`, `build-engine`) (being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
