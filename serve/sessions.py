"""Conversations the server remembers by `session_id`: the state after everything the session has fed so far.

A request naming a session continues from its state (or from a fresh state when the id is new) and stores its
final state back when it finishes; only one request per session runs at a time (a second gets 409). The least
recently used sessions are forgotten beyond `max_sessions`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from rwkv_deploy.runtime.state import RecurrentState

from .errors import ApiError

MAX_SESSION_ID = 128


class SessionStore:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._states: OrderedDict[str, RecurrentState] = OrderedDict()
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def claim(self, session_id: str) -> RecurrentState | None:
        """Mark the session busy and return its state (None for a new session); 409 when it is busy."""
        with self._lock:
            if session_id in self._busy:
                raise ApiError(409, f"session {session_id!r} has a request in progress; wait for it to finish",
                               "invalid_request_error", "session_busy", "session_id")
            self._busy.add(session_id)
            return self._states.get(session_id)

    def release(self, session_id: str, state: RecurrentState | None) -> None:
        """End the session's request: store its final state (None: keep the old one, the request failed)."""
        with self._lock:
            self._busy.discard(session_id)
            if state is None:
                return
            self._states[session_id] = state
            self._states.move_to_end(session_id)
            excess = len(self._states) - self.max_sessions
            for oldest in [s for s in self._states if s not in self._busy][:max(0, excess)]:
                del self._states[oldest]

    def forget(self, session_id: str) -> bool:
        with self._lock:
            if session_id in self._busy:
                raise ApiError(409, f"session {session_id!r} has a request in progress", "invalid_request_error",
                               "session_busy", "session_id")
            return self._states.pop(session_id, None) is not None
