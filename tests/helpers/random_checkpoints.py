"""Random-weight checkpoints for tests: the package's own generator (rwkv_deploy.models.random_checkpoint)."""

from rwkv_deploy.models.random_checkpoint import (DEFAULT_LORA, VERSIONS, Spec, default_ffn_size,  # noqa: F401
                                                  make_checkpoint, save_checkpoint)
