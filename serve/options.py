"""The server's settings (`rwkv-deploy serve` options), one dataclass with the defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.runtime.generation import PREFILL_CHUNK

CHAT_TEMPLATES = ("world", "g1", "none")


@dataclass(frozen=True)
class ServeOptions:
    """host 127.0.0.1 unless told otherwise; sizes bound every queue, cache and request body."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16  # live requests stepped together per model (prefilling or decoding)
    max_queue: int = 64  # requests waiting for a slot per model; more get 429
    max_prompt_tokens: int = 32768  # a longer prompt gets 413
    max_body_mib: float = 16.0  # a larger request body gets 413 (a state travels in the body, base64)
    state_cache_mib: float = 512.0  # prefix cache per model (LRU); 0 turns it off
    max_sessions: int = 1024  # stored session states per model (LRU)
    prefill_chunk: int = PREFILL_CHUNK  # tokens per prefill call; prefix-cache entries sit at multiples of it
    threads: int | None = None  # ONNX Runtime intra-op threads (None: one per core)
    cpu_graph: str = "auto"  # the packages' CPU graphs (runtime/cpu_graph.py): auto, on or off
    spin_wait: bool = False  # ONNX Runtime's workers spin between ops (cores given to the server; docs/bench.md)
    chat_templates: dict[str, str] = field(default_factory=dict)  # model id -> template; missing: default_template
    default_template: str = "world"
    drain_seconds: float = 30.0  # after SIGTERM: how long streams in flight may take to finish
    access_log: bool = False
    verify: bool = True  # hash the packages' files at start (the trust boundary `generate` uses)
    triton: str | None = None  # HOST:PORT of a Triton server (gRPC): front-end mode, the state held by Triton
    triton_model: str | None = None  # the model's name in that server
    request_timeout: float = 30.0  # seconds for a request's head (else closed), then for its body (else 408)
    max_connections: int = 1024  # open connections and requests beyond this get 503
    allowed_hosts: tuple[str, ...] = ()  # Host names a loopback server answers besides localhost ("*": any)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_prompt_tokens", "max_sessions", "prefill_chunk", "max_connections"):
            if getattr(self, name) < 1:
                raise RefusedError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise RefusedError(f"--port must be in 1..65535, got {self.port}")
        if self.state_cache_mib < 0 or self.max_body_mib <= 0 or self.drain_seconds < 0 or self.request_timeout <= 0:
            raise RefusedError("--state-cache-mib and --drain-seconds must be >= 0, --max-body-mib and "
                                   "--request-timeout > 0")
        if (self.triton is None) != (self.triton_model is None):
            raise RefusedError("--triton HOST:PORT and --model NAME go together")
        for template in (self.default_template, *self.chat_templates.values()):
            if template not in CHAT_TEMPLATES:
                raise RefusedError(f"unknown chat template {template!r}; choose one of {', '.join(CHAT_TEMPLATES)}")

    def template_for(self, model_id: str) -> str:
        return self.chat_templates.get(model_id, self.default_template)
