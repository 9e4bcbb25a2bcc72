"""How a validation fails: it could not run (exit 2), or it ran and the artifact is not faithful enough (exit 1).

Apart from result.py so that the sides, which raise ValidationError, import nothing that imports them."""

from __future__ import annotations

from rwkv_deploy.errors import RefusedError, RwkvDeployError


class ValidationError(RefusedError):
    """The validation could not run (bad package, wrong checkpoint, missing dependency)."""


class ThresholdsNotMet(RwkvDeployError):
    """The validation ran and the artifact is not faithful enough: exit code 1."""

    exit_code = 1
