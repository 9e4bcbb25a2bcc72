"""States in requests and responses: base64 of the package's state file (`RecurrentState.save` / `load`).

The bytes are exactly what `rwkv-deploy generate --save-state` writes, so a client can move a conversation
between the server and `generate --load-state`, or between servers of the same package. Loading goes through
`RecurrentState.load`: the file must belong to this package's graph (sha256), with the manifest's tensors,
shapes and dtypes, finite, one sequence.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path

from rwkv_deploy.package.manifest import Manifest
from rwkv_deploy.runtime.state import RecurrentState, StateError

from .errors import bad_request


def encode_state(state: RecurrentState) -> str:
    with tempfile.TemporaryDirectory(prefix="rwkv-serve-state-") as tmp:
        path = Path(tmp) / "state.npz"
        state.save(path)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def decode_state(text: str, manifest: Manifest) -> RecurrentState:
    """The state a request carries; 400 naming the problem when it is not one of this model's state files."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("state is not valid base64", "state") from None
    with tempfile.TemporaryDirectory(prefix="rwkv-serve-state-") as tmp:
        path = Path(tmp) / "state.npz"
        path.write_bytes(data)
        try:
            state = RecurrentState.load(path, manifest)
        except StateError as exc:
            raise bad_request(f"state: {str(exc).replace(str(path), 'the state file')}", "state") from None
    if state.batch != 1:
        raise bad_request(f"state holds {state.batch} sequences; a request continues one", "state")
    return state
