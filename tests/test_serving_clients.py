"""Client behaviour that needs a misbehaving server: retries on 503, timeouts, unreachable hosts.

A stdlib HTTP server on 127.0.0.1 plays the misbehaving TF Serving; no TensorFlow model needed.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from deeplense_tf.serving.rest_client import RestClient
from deeplense_tf.serving.status import ServingError


class _Script:
    """Answers to give, in order (the last one repeats)."""

    def __init__(self, answers, drop_connections=False):
        self.answers = list(answers)
        self.paths = []
        self.bodies = []
        # Hang up after each answer without saying so, as servers do with idle connections.
        self.drop_connections = drop_connections


def _server(script: _Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            script.bodies.append(self.rfile.read(length))
            script.paths.append(self.path)
            status, doc, delay = script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]
            time.sleep(delay)
            payload = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            if script.drop_connections:
                self.close_connection = True

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # clients that time out hang up on us
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def fake():
    servers = []

    def start(answers, **options):
        script = _Script(answers, **options)
        server = _server(script)
        servers.append(server)
        return script, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_retries_503_then_returns_outputs(fake):
    script, url = fake([
        (503, {"error": "The batch scheduling queue to which this task was submitted is full"}, 0),
        (503, {"error": "still full"}, 0),
        (200, {"predictions": [{"a": 1.5, "b": [1, 2]}, {"a": 2.5, "b": [3, 4]}]}, 0),
    ])
    client = RestClient(url, model="m", retries=3, backoff_s=0.01)
    out = client.predict(np.zeros((2, 2, 2, 1), np.float32), version=3)
    assert len(script.paths) == 3 and script.paths[-1] == "/v1/models/m/versions/3:predict"
    assert out["a"].dtype == np.float32 and out["a"].tolist() == [1.5, 2.5]
    assert out["b"].tolist() == [[1, 2], [3, 4]]
    sent = json.loads(script.bodies[-1])
    assert set(sent) == {"instances"} and np.asarray(sent["instances"]).shape == (2, 2, 2, 1)


def test_gives_up_after_retries_with_the_servers_message(fake):
    script, url = fake([(503, {"error": "overloaded"}, 0)])
    client = RestClient(url, model="m", retries=2, backoff_s=0.01)
    with pytest.raises(ServingError) as info:
        client.status()
    assert len(script.paths) == 3
    assert (info.value.code, info.value.http_status, info.value.message) == ("UNAVAILABLE", 503, "overloaded")


def test_no_retry_on_client_errors(fake):
    script, url = fake([(400, {"error": "JSON Parse error: Invalid value. at offset: 0"}, 0)])
    with pytest.raises(ServingError) as info:
        RestClient(url, retries=3, backoff_s=0.01).predict(np.zeros((1, 1), np.float32), label="stable")
    assert len(script.paths) == 1 and script.paths[0] == "/v1/models/deeplense/labels/stable:predict"
    assert info.value.code == "INVALID_ARGUMENT" and "JSON Parse error" in info.value.message


def test_timeout_raises_deadline_exceeded(fake):
    _, url = fake([(200, {"model_version_status": []}, 1.0)])
    start = time.perf_counter()
    with pytest.raises(ServingError) as info:
        RestClient(url, timeout=0.2, retries=0).status()
    assert info.value.code == "DEADLINE_EXCEEDED" and time.perf_counter() - start < 0.9


def test_unreachable_server_is_unavailable_after_retries():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServingError) as info:
        RestClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01).status()
    assert info.value.code == "UNAVAILABLE" and "cannot reach" in info.value.message


def test_columnar_answer_and_single_output_name_from_metadata(fake):
    metadata = {"model_spec": {"name": "m", "version": "4"}, "metadata": {"signature_def": {
        "signature_def": {"embed": {"method_name": "tensorflow/serving/predict",
                                    "inputs": {"image": {"dtype": "DT_FLOAT"}},
                                    "outputs": {"embedding": {"dtype": "DT_FLOAT", "tensor_shape": {
                                        "dim": [{"size": "-1"}, {"size": "2"}]}}}}}}}}
    script, url = fake([(200, {"outputs": [[1, 2]]}, 0), (200, metadata, 0)])
    out = RestClient(url, model="m").predict(np.zeros((1, 3), np.float32), signature="embed",
                                             columnar=True)
    assert list(out) == ["embedding"] and out["embedding"].shape == (1, 2)
    assert json.loads(script.bodies[0]) == {"signature_name": "embed", "inputs": [[0.0, 0.0, 0.0]]}
    assert script.paths[1] == "/v1/models/m/metadata"


def test_version_and_label_together_is_refused():
    with pytest.raises(ValueError, match="not both"):
        RestClient("http://127.0.0.1:1").status(version=1, label="stable")


def test_run_load_counts_answers_errors_and_starts_after_warmup():
    from deeplense_tf.serving.loadtest import run_load

    calls, started = [], []
    lock = threading.Lock()

    def call():
        with lock:
            calls.append(bool(started))
            n = len(calls)
        if n % 10 == 0:
            raise RuntimeError("boom")
        time.sleep(0.001)

    result = run_load(call, concurrency=4, num_requests=40, warmup_per_thread=1,
                      on_start=lambda: started.append(True))
    assert calls[:4] == [False] * 4 and all(calls[4:])  # warm-up calls, then the timed ones
    assert result.requests + result.errors == 40 and result.errors == 4
    assert "boom" in result.error_samples[0]
    assert result.throughput > 0 and 1.0 <= result.p50_ms <= result.p99_ms


def test_a_dropped_keep_alive_connection_is_reopened_without_using_a_retry(fake):
    script, url = fake([(200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}, 0)],
        drop_connections=True)
    client = RestClient(url, retries=0)
    for _ in range(3):
        assert client.status()[0]["state"] == "AVAILABLE"
    assert len(script.paths) == 3
