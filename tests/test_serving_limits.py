"""Limits of the local server under hostile input (issue 14, items 2-4; docs/security.md "Server").

HTTP cases go over raw sockets, so the bytes on the wire are exactly the attack's: chunked
bodies with a negative or malformed chunk size, conflicting Content-Length headers, slow
clients, more connections than the cap. Every socket has a timeout, every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from serving_fixtures import (
    MODEL_NAME,
    TARGET,
    expected_outputs,
    random_images,
    write_fixture_model,
)

from deeplense_tf.serving.config import ModelConfig
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.rest_client import RestClient
from deeplense_tf.serving.server import ModelServer
from deeplense_tf.serving.status import ServingError

LIMIT = 64 * 1024  # body limit of the test servers, bytes
PREDICT = "/v1/models/deeplense:predict"


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving-limits") / MODEL_NAME
    write_fixture_model(base, 1)
    return base


def _server(base_path, **options):
    store = ModelStore([ModelConfig(MODEL_NAME, base_path)], poll_interval_s=0,
                       max_request_batch=options.pop("max_request_batch", 1024))
    return ModelServer(store, rest_port=0, grpc_port=options.pop("grpc_port", None),
                       max_request_bytes=LIMIT, **options).start()


@pytest.fixture(scope="module")
def server(base_path):
    # Defaults for the timeout and the cap: what `deeplense serve` runs with.
    made = _server(base_path, grpc_port=0)
    yield made
    made.stop()


def _exchange(server, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends raw bytes, returns everything the server answers before it closes (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_answer(sock)


def _read_answer(sock) -> bytes:
    answer = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
            head, sep, rest = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if sep and length and len(rest) >= length[0]:
                break
    except TimeoutError:
        pass
    return answer


def _status_and_error(answer: bytes) -> tuple[int, str]:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(answer.split(b" ", 2)[1])
    body = answer.partition(b"\r\n\r\n")[2]
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]


def _post_head(extra_headers: str) -> bytes:
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{extra_headers}\r\n").encode()


def _good_body(n=1, seed=0):
    images = random_images(n, seed=seed)
    return images, json.dumps({"instances": images.tolist()}).encode()


# --- chunked bodies (issue 14 item 2)


def test_chunk_size_minus_one_is_refused_at_once(server):
    # Before the fix, "-1" made the server read until the client closed (600 MB accepted).
    start = time.monotonic()
    answer = _exchange(server, _post_head("Transfer-Encoding: chunked\r\n") + b"-1\r\n" + b"[" * 4096)
    status, message = _status_and_error(answer)
    assert status == 400 and "chunk size" in message
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("line", [b"zz", b"0x10", b"+10", b" ", b"1 0", b"10000000000000000000",
                                  b"a" * 2000])
def test_malformed_chunk_size_lines_get_400(server, line):
    # Before the fix these closed the connection without an answer.
    answer = _exchange(server, _post_head("Transfer-Encoding: chunked\r\n") + line + b"\r\nabc\r\n0\r\n\r\n")
    status, message = _status_and_error(answer)
    assert status in (400, 413) and ("chunk" in message or "exceeds the limit" in message)


def test_chunk_data_must_end_with_crlf(server):
    answer = _exchange(server, _post_head("Transfer-Encoding: chunked\r\n") + b"3\r\nabcXY0\r\n\r\n")
    status, message = _status_and_error(answer)
    assert status == 400 and "chunk" in message


def test_chunked_total_is_bounded_by_the_body_limit(server):
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(_post_head("Transfer-Encoding: chunked\r\n"))
        sent = 0
        try:
            while sent < 4 * LIMIT:  # the server must stop us well before this
                sock.sendall(chunk)
                sent += 8192
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, message = _status_and_error(_read_answer(sock))
    assert status == 413 and f"limit of {LIMIT} bytes" in message


def test_a_declared_huge_chunk_is_refused_before_reading_it(server):
    answer = _exchange(server, _post_head("Transfer-Encoding: chunked\r\n") + b"7fffffff\r\nab")
    status, _ = _status_and_error(answer)
    assert status == 413


def test_well_formed_chunked_body_with_extensions_and_trailers_is_served(server):
    images, body = _good_body(2)
    middle = len(body) // 2
    data = (b"%x;name=value\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n"
            % (middle, body[:middle], len(body) - middle, body[middle:]))
    answer = _exchange(server, _post_head("Transfer-Encoding: chunked\r\n") + data)
    assert answer.startswith(b"HTTP/1.1 200")
    predictions = json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"]
    np.testing.assert_allclose([p[TARGET] for p in predictions], expected_outputs(images)[TARGET],
                               rtol=1e-5, atol=1e-6)


# --- Content-Length (issue 14 item 2)


@pytest.mark.parametrize("headers", [
    "Content-Length: 5\r\nContent-Length: 500\r\n",    # conflicting duplicates
    "Content-Length: 5, 500\r\n",                       # the same as one folded header
    "Content-Length: +5\r\n",                           # int() would accept these
    "Content-Length: 5_0\r\n",
    "Content-Length: -1\r\n",
    "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # request smuggling's classic
])
def test_ambiguous_content_length_gets_400(server, headers):
    answer = _exchange(server, _post_head(headers) + b"0\r\n\r\n")
    status, message = _status_and_error(answer)
    assert status == 400 and ("Content-Length" in message or "Transfer-Encoding" in message)


def test_identical_duplicate_content_length_is_accepted(server):
    _, body = _good_body(1)
    answer = _exchange(server, _post_head(f"Content-Length: {len(body)}\r\n" * 2) + body)
    assert answer.startswith(b"HTTP/1.1 200")


def test_unknown_transfer_coding_is_refused(server):
    answer = _exchange(server, _post_head("Transfer-Encoding: gzip, chunked\r\n") + b"0\r\n\r\n")
    status, message = _status_and_error(answer)
    assert status == 501 and "Transfer-Encoding" in message


# --- deeply nested JSON (issue 14 item 4)


@pytest.mark.parametrize("template", [
    '{{"instances": {v}}}', '{{"inputs": {v}}}', '{{"instances": [{{"image": {v}}}]}}',
    '{{"inputs": {{"image": {v}}}}}', '{{"instances": {v}, "flag": true}}',
    '{{"instances": [1, {v}]}}',
])
@pytest.mark.parametrize("depth", [40, 65, 200, 990, 100_000])
def test_deeply_nested_json_is_400_not_500(server, template, depth):
    # numpy refuses more than 64 dimensions and Python's recursion stops near 1,000: both
    # were 500s before.
    body = template.format(v="[" * depth + "1" + "]" * depth).encode()
    client = RestClient(server.rest_url, MODEL_NAME, retries=0)
    with pytest.raises(ServingError) as info:
        client._request_json("POST", PREDICT, body)
    assert info.value.http_status in (400, 413), info.value.message
    if info.value.http_status == 400:
        assert "Internal" not in info.value.message


# --- gRPC shape bombs (issue 14 item 2)


def _grpc_predict(server, tensor):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["image"].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=30)
        except grpc.RpcError as err:
            return err.code().name, err.details(), request.ByteSize()
    return "OK", "", request.ByteSize()


def _bomb(shape, values=(1.0,)):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=list(values))
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]))
    return proto


def test_grpc_shape_bomb_is_refused_without_expanding_it(server):
    # 51 bytes declaring 3,000 64x64 images: TensorFlow would repeat the one value 12 M times.
    start = time.monotonic()
    code, message, size = _grpc_predict(server, _bomb([3000, 64, 64, 1]))
    assert size < 100 and code == "INVALID_ARGUMENT"
    assert "3000" in message and time.monotonic() - start < 5
    # Within the batch cap but still far more than the message carries.
    code, message, _ = _grpc_predict(server, _bomb([1000, 64, 64, 1]))
    assert code == "INVALID_ARGUMENT" and "elements" in message


def test_grpc_batch_cap_and_negative_dims(base_path):
    made = _server(base_path, grpc_port=0, max_request_batch=4)
    try:
        images = random_images(5)
        import tensorflow as tf

        code, message, _ = _grpc_predict(made, tf.make_tensor_proto(images))
        assert code == "INVALID_ARGUMENT" and "5 rows" in message and "4" in message
        code, _, _ = _grpc_predict(made, _bomb([-1, 8, 8, 1]))
        assert code == "INVALID_ARGUMENT"
        code, _, _ = _grpc_predict(made, tf.make_tensor_proto(images[:4]))
        assert code == "OK"
        # REST has the same cap.
        client = RestClient(made.rest_url, MODEL_NAME, retries=0)
        with pytest.raises(ServingError, match="5 rows"):
            client.predict(images)
    finally:
        made.stop()


def test_grpc_broadcast_within_limits_still_works(server):
    # make_tensor_proto(0.5, shape=[2, 8, 8, 1]) sends one value for 128: TF's rules allow it.
    import tensorflow as tf

    code, _, _ = _grpc_predict(server, tf.make_tensor_proto(0.5, shape=[2, 8, 8, 1]))
    assert code == "OK"


# --- slow clients and the connection cap (issue 14 item 3)


def test_slow_client_is_cut_off_after_the_read_timeout(base_path):
    made = _server(base_path, read_timeout_s=1.0)
    try:
        with socket.create_connection(("127.0.0.1", made.rest_port), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\n")
            closed_after = None
            for _ in range(40):  # a header byte every 0.2 s: each read alone is quick
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - start
                    break
                time.sleep(0.2)
            if closed_after is None:
                sock.settimeout(0.5)
                assert _read_answer(sock).startswith(b"HTTP/1.1 408"), "never cut off"
                closed_after = time.monotonic() - start
        assert closed_after < 4.0
    finally:
        made.stop()


def test_idle_connection_is_closed_after_the_read_timeout(base_path):
    made = _server(base_path, read_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", made.rest_port), timeout=5) as sock:
            start = time.monotonic()
            assert sock.recv(100) == b""  # closed by the server, without an answer
            assert time.monotonic() - start < 3
    finally:
        made.stop()


def test_slow_clients_at_the_connection_cap_do_not_stop_others(base_path):
    made = _server(base_path, read_timeout_s=60.0, max_connections=4)
    slow = []
    threads_before = threading.active_count()
    try:
        for _ in range(40):  # ten times the cap, each stuck mid-headers
            sock = socket.create_connection(("127.0.0.1", made.rest_port), timeout=10)
            sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        time.sleep(1.0)  # older than the eviction age
        assert threading.active_count() - threads_before <= 4 + 2
        images = random_images(2, seed=3)
        start = time.monotonic()
        out = RestClient(made.rest_url, MODEL_NAME, retries=3, backoff_s=0.2).predict(images)
        assert time.monotonic() - start < 10  # far less than the 60 s read timeout
        np.testing.assert_allclose(out[TARGET], expected_outputs(images)[TARGET], rtol=1e-5, atol=1e-6)
    finally:
        for sock in slow:
            sock.close()
        made.stop()


def test_at_the_cap_with_every_connection_busy_new_ones_get_503(base_path):
    made = _server(base_path, read_timeout_s=60.0, max_connections=2)
    socks = []
    try:
        for _ in range(2):  # young connections in the middle of a request: not evicted
            sock = socket.create_connection(("127.0.0.1", made.rest_port), timeout=10)
            sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\n")
            socks.append(sock)
        time.sleep(0.2)
        answer = _exchange(made, b"GET /v1/models/deeplense HTTP/1.1\r\nHost: x\r\n\r\n")
        status, message = _status_and_error(answer)
        assert status == 503 and "--max-connections" in message
    finally:
        for sock in socks:
            sock.close()
        made.stop()
