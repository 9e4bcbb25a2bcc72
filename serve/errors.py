"""Errors in OpenAI's shape, `{"error": {"message", "type", "code"}}`, each with its HTTP status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server refuses or could not finish: HTTP status, OpenAI error type and code, one line."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def model_not_found(model: str, served: list[str]) -> ApiError:
    return ApiError(404, f"model {model!r} is not served here (served: {', '.join(served)})", "invalid_request_error",
                    "model_not_found", "model")


def too_large(message: str, code: str) -> ApiError:
    return ApiError(413, message, "invalid_request_error", code)


def queue_full(model: str, depth: int) -> ApiError:
    return ApiError(429, f"the queue of model {model!r} is full ({depth} requests waiting); retry later",
                    "server_busy", "queue_full")


def request_timeout(seconds: float) -> ApiError:
    return ApiError(408, f"the request body did not arrive within {seconds:g} seconds", "invalid_request_error",
                    "request_timeout")


def client_gone() -> ApiError:
    """The client closed the connection while sending its request (nobody reads the answer)."""
    return ApiError(400, "the client closed the connection before its request was complete",
                    "invalid_request_error", "client_disconnected")


def draining() -> ApiError:
    return ApiError(503, "the server is shutting down and takes no new requests", "server_unavailable", "draining")


def internal(message: str) -> ApiError:
    return ApiError(500, message, "server_error", "internal_error")
