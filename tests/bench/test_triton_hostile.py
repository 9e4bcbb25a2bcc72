"""`bench-triton` against a hostile gRPC server that speaks Triton's protocol: one that answers the model's
metadata and then never answers its statistics, and one whose inference answers are 100 MB. Every call has the
request timeout, every answer a size cap: the tool ends with one line and exit code 2, it never hangs or holds
the answer."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from typer.testing import CliRunner

from rwkv_deploy.bench.triton_load import MAX_ANSWER_BYTES
from rwkv_deploy.cli.main import app

runner = CliRunner()
VOCAB = 256


class HostileTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.released = threading.Event()

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context):
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[tensor(name="token", datatype="INT64", shape=[-1, 1])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, VOCAB])])

    def ModelStatistics(self, request, context):
        if self.mode == "silent-statistics":
            self.released.wait(600)  # never answers while the test runs
        return service_pb2.ModelStatisticsResponse()

    def ModelInfer(self, request, context):
        huge = bytes(100 << 20)  # 100 MB of "logits"
        output = service_pb2.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, VOCAB])
        return service_pb2.ModelInferResponse(model_name=request.model_name, outputs=[output],
                                              raw_output_contents=[huge])


@pytest.fixture
def hostile_server(request):
    servicer = HostileTriton(request.param)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_send_message_length", 200 << 20)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    servicer.released.set()
    server.stop(0)


@pytest.mark.parametrize("hostile_server", ["silent-statistics"], indirect=True)
def test_a_server_that_never_answers_its_statistics_ends_in_the_timeout(hostile_server):
    started = time.monotonic()
    result = runner.invoke(app, ["bench-triton", hostile_server, "--model", "m", "--sequences", "1", "--tokens", "2",
                                 "--warmup-tokens", "0", "--timeout", "2"])
    assert time.monotonic() - started < 60
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "statistics" in lines[0] and hostile_server in lines[0], lines


@pytest.mark.parametrize("hostile_server", ["huge-answers"], indirect=True)
def test_answers_over_the_cap_are_refused_not_held(hostile_server):
    assert MAX_ANSWER_BYTES < 100 << 20
    result = runner.invoke(app, ["bench-triton", hostile_server, "--model", "m", "--sequences", "2", "--tokens", "2",
                                 "--warmup-tokens", "0", "--timeout", "10", "-q"])
    assert result.exit_code == 1, result.output  # the run ends and reports its errors
    report = json.loads(result.stdout)
    assert report["answered"] == 0 and report["errors"] == report["requests"] == 2
    assert all("RESOURCE_EXHAUSTED" in m or "larger than max" in m for m in report["error_messages"]), report
