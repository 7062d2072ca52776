"""The local server beyond the shared contract: robustness, version pick-up, limits, the CLI.

All traffic goes to 127.0.0.1 on ports the OS picks; every loop is bounded.
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
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

from deeplense_tf.cli import build_parser, main
from deeplense_tf.serving.batching import BatchingOptions
from deeplense_tf.serving.config import ModelConfig
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.rest_client import RestClient
from deeplense_tf.serving.server import ModelServer
from deeplense_tf.serving.status import ServingError

LIMIT = 256 * 1024  # request size limit of the test server, bytes


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving-server") / MODEL_NAME
    write_fixture_model(base, 1, scale=1.0)
    return base


@pytest.fixture(scope="module")
def batching_server(base_path):
    store = ModelStore([ModelConfig(MODEL_NAME, base_path, labels={"stable": 1})],
                       poll_interval_s=0,
                       batching=BatchingOptions(max_batch_size=16, batch_timeout_micros=5000,
                                                num_batch_threads=2))
    server = ModelServer(store, rest_port=0, grpc_port=None, max_request_bytes=LIMIT).start()
    yield server
    server.stop()


def _connection(server):
    return http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)


def _good_body(n=2, seed=0):
    images = random_images(n, seed=seed)
    return images, json.dumps({"instances": images.tolist()}).encode()


def _malformed(rng: random.Random) -> tuple[str, str, bytes, set[int]]:
    """One random bad request: (method, path, body, acceptable statuses)."""
    predict = "/v1/models/deeplense:predict"
    images, good = _good_body(1, seed=rng.randrange(100))
    kind = rng.randrange(14)
    if kind == 0:
        return "POST", predict, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), {400}
    if kind == 1:  # valid JSON cut short
        return "POST", predict, good[: rng.randrange(1, len(good) - 1)], {400}
    if kind == 2:  # one pixel replaced by a value of the wrong JSON type
        text = good.decode()
        cut = text.index("[[[") + 4 + rng.randrange(20)
        while text[cut] not in "-0123456789":
            cut += 1
        end = cut
        while text[end] not in ",]":
            end += 1
        bad = rng.choice(['"pixel"', "null", "true", "{}", '{"b64": "AA=="}', "[1, 2]"])
        return "POST", predict, (text[:cut] + bad + text[end:]).encode(), {400}
    if kind == 3:  # wrong shape
        shape = [rng.randrange(1, 3)] + [rng.choice([1, 3, 7, 9]) for _ in range(rng.randrange(0, 4))]
        body = {"instances": np.zeros(shape).tolist()} if rng.random() < 0.5 else {
            "inputs": np.zeros(shape).tolist()}
        return "POST", predict, json.dumps(body).encode(), {400}
    if kind == 4:  # non-finite pixels
        images[0, rng.randrange(8), rng.randrange(8), 0] = rng.choice([np.nan, np.inf, -np.inf])
        return "POST", predict, json.dumps({"instances": images.tolist()}).encode(), {400}
    if kind == 5:
        body = rng.choice([{"instances": []}, {"instances": {}}, {"instances": 5}, {},
                           {"inputs": []}, {"inputs": None}, {"signature_name": None},
                           {"instances": [[1]], "inputs": [[1]]}, {"instances": [{}]},
                           {"instances": [{"image": images[0].tolist(), "extra": 1}]}])
        return "POST", predict, json.dumps(body).encode(), {400}
    if kind == 6:
        body = {"signature_name": rng.choice(["nope", "", "embed!", "__saved_model_init_op"]),
                "instances": images.tolist()}
        return "POST", predict, json.dumps(body).encode(), {200} if body["signature_name"] == "" else {400}
    if kind == 7:
        path = rng.choice(["/v1/models/nope:predict", "/v1/models/deeplense/versions/9:predict",
                           "/v1/models/deeplense/versions/99999999999999999999:predict"])
        return "POST", path, good, {400, 404}
    if kind == 8:
        return "POST", "/v1/models/deeplense/labels/" + rng.choice(["nope", "x%20y"]) + ":predict", good, {400}
    if kind == 9:
        method, path = rng.choice([("GET", predict), ("POST", "/v1/models/deeplense"),
                                   ("PUT", predict), ("DELETE", "/v1/models/deeplense"),
                                   ("GET", "/v2/models/deeplense"), ("GET", "/"),
                                   ("POST", "/v1/models/deeplense/versions/abc:predict"),
                                   ("GET", "/v1/models/deeplense/versions/1/metadata/extra")])
        return method, path, good if method == "POST" else b"", {400, 404}
    if kind == 10:
        depth = rng.choice([50, 5000])
        return "POST", predict, b'{"instances": ' + b"[" * depth + b"]" * depth + b"}", {400}
    if kind == 11:
        return "POST", predict, b'{"instances": [["\xff\xfe"]]}', {400}
    if kind == 12:
        return "POST", predict, json.dumps({"instances": [[[[1e39]] * 8] * 8]}).encode(), {400}
    return "POST", "/v1/models/deeplense:classify", good, {400}


def test_a_thousand_malformed_requests_leave_the_server_answering(batching_server):
    rng = random.Random(1234)
    counts: dict[int, int] = {}
    conn = _connection(batching_server)
    deadline = time.monotonic() + 120  # bounded in time as well as in count
    for i in range(1000):
        assert time.monotonic() < deadline, f"too slow: stopped after {i} requests"
        method, path, body, allowed = _malformed(rng)
        if i % 200 == 0:  # a few oversized bodies too
            method, path, body, allowed = "POST", "/v1/models/deeplense:predict", b" " * (LIMIT + 1), {413}
        try:
            conn.request(method, path, body=body or None)
            response = conn.getresponse()
            data = response.read()
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            conn = _connection(batching_server)
            conn.request(method, path, body=body or None)
            response = conn.getresponse()
            data = response.read()
        assert response.status in allowed, (method, path, body[:120], response.status, data[:300])
        if response.status != 200:
            doc = json.loads(data)
            assert set(doc) == {"error"} and doc["error"], data[:200]
        counts[response.status] = counts.get(response.status, 0) + 1
        if response.will_close:
            conn.close()
            conn = _connection(batching_server)
    conn.close()
    assert counts.get(413) == 5 and counts.get(400, 0) > 500 and counts.get(404, 0) > 0
    # Still alive, and still right.
    client = RestClient(batching_server.rest_url, MODEL_NAME)
    images = random_images(3, seed=99)
    out = client.predict(images)
    np.testing.assert_allclose(out[TARGET], expected_outputs(images)[TARGET], rtol=1e-5, atol=1e-6)
    assert client.status()[0]["state"] == "AVAILABLE"


def test_oversized_body_gets_413_and_the_server_keeps_serving(batching_server):
    client = RestClient(batching_server.rest_url, MODEL_NAME, retries=0)
    too_many = random_images(600)  # ~ 600 * 64 pixels * ~11 bytes (orjson's float32) > 256 KiB
    with pytest.raises(ServingError) as info:
        client.predict(too_many)
    assert info.value.http_status == 413 and "exceeds the limit" in info.value.message
    assert client.predict(random_images(2))[TARGET].shape == (2,)


def test_concurrent_requests_are_batched_and_answered_correctly(batching_server):
    client = RestClient(batching_server.rest_url, MODEL_NAME)
    results, errors = {}, []

    def send(i):
        images = random_images(1 + i % 3, seed=100 + i)
        try:
            for _ in range(3):
                results[i] = (images, client.predict(images))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for images, out in results.values():
        np.testing.assert_allclose(out[TARGET], expected_outputs(images)[TARGET], rtol=1e-5, atol=1e-6)
    servable = batching_server.store.servable(MODEL_NAME)
    assert max(servable.batch_sizes()) > 3  # some model calls served several requests


def test_rest_protocol_edges(batching_server):
    images, good = _good_body(2)
    conn = _connection(batching_server)
    # Chunked bodies are read like any other.
    conn.putrequest("POST", "/v1/models/deeplense:predict")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(good), 1000):
        piece = good[start:start + 1000]
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 200 and len(json.loads(response.read())["predictions"]) == 2
    # Keep-alive: the same connection answers again.
    conn.request("GET", "/v1/models/deeplense")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["model_version_status"]
    conn.close()
    # A garbage request line still gets a JSON error.
    with socket.create_connection(("127.0.0.1", batching_server.rest_port), timeout=10) as raw:
        raw.sendall(b"NONSENSE\r\n\r\n")
        answer = raw.recv(65536)
    assert answer.startswith(b"HTTP/") and b'{"error"' in answer


def test_new_version_is_picked_up_and_removed_one_unloaded_without_restart(tmp_path):
    base = tmp_path / MODEL_NAME
    write_fixture_model(base, 1, scale=1.0)
    (base / "not-a-version").mkdir()  # ignored: not an integer
    store = ModelStore([ModelConfig(MODEL_NAME, base)], poll_interval_s=0.1)
    images = random_images(2, seed=4)
    with ModelServer(store, rest_port=0, grpc_port=None) as server:
        client = RestClient(server.rest_url, MODEL_NAME)
        np.testing.assert_allclose(client.predict(images)[TARGET], expected_outputs(images, 1.0)[TARGET],
                                   rtol=1e-5)
        write_fixture_model(base, 2, scale=3.0)  # written aside, renamed into place
        _wait(lambda: client.status()[0] == {"version": 2, "state": "AVAILABLE", "error_code": "OK",
                                             "error_message": ""})
        np.testing.assert_allclose(client.predict(images)[TARGET], expected_outputs(images, 3.0)[TARGET],
                                   rtol=1e-5)
        shutil.rmtree(base / "1")
        _wait(lambda: {s["version"]: s["state"] for s in client.status()}.get(1) == "END")
        with pytest.raises(ServingError) as info:
            client.predict(images, version=1)
        assert info.value.http_status == 404


def test_a_broken_version_folder_is_reported_while_the_others_serve(tmp_path):
    base = tmp_path / MODEL_NAME
    write_fixture_model(base, 1)
    (base / "5").mkdir()
    (base / "5" / "saved_model.pb").write_bytes(b"not a protobuf")
    store = ModelStore([ModelConfig(MODEL_NAME, base)], poll_interval_s=0)
    with ModelServer(store, rest_port=0, grpc_port=None) as server:
        client = RestClient(server.rest_url, MODEL_NAME)
        states = {s["version"]: s for s in client.status()}
        assert states[1]["state"] == "AVAILABLE"
        assert states[5]["state"] == "END" and states[5]["error_code"] != "OK"
        assert "version 5" in states[5]["error_message"]
        assert client.metadata()["version"] == 1


def test_warmup_requests_are_replayed_at_load(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    base = tmp_path / MODEL_NAME
    version_dir = write_fixture_model(base, 1)
    (version_dir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as w:
        for signature in ("serving_default", "embed", "no_such_signature"):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs["image"].CopyFrom(tf.make_tensor_proto(random_images(2)))
            w.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    store = ModelStore([ModelConfig(MODEL_NAME, base)], poll_interval_s=0).start()
    try:
        assert store.servable(MODEL_NAME).warmup_requests == 2  # the bad one is skipped
    finally:
        store.close()


def test_latest_policy_serves_only_the_newest(tmp_path):
    base = tmp_path / MODEL_NAME
    write_fixture_model(base, 1)
    write_fixture_model(base, 3, scale=2.0)
    store = ModelStore([ModelConfig(MODEL_NAME, base, version_policy="latest")], poll_interval_s=0)
    store.start()
    try:
        assert [s["version"] for s in store.model_status(MODEL_NAME)] == [3]
        with pytest.raises(ServingError, match=r"Specific\(deeplense, 1\)"):
            store.servable(MODEL_NAME, 1)
    finally:
        store.close()


def test_cli_options_build_the_server(base_path):
    args = build_parser(only="serve").parse_args([
        "serve", "--model-base-path", str(base_path), "--port", "0", "--grpc-port", "0",
        "--labels", "stable=1", "--enable-batching", "--max-batch-size", "4",
        "--file-system-poll-wait-seconds", "0"])
    from deeplense_tf.serving.grpc_client import GrpcClient
    from deeplense_tf.serving.serve_cli import build_server

    with build_server(args) as server:
        assert server.store.batching.max_batch_size == 4
        images = random_images(2, seed=11)
        rest = RestClient(server.rest_url, MODEL_NAME).predict(images, label="stable")
        with GrpcClient(server.grpc_target, MODEL_NAME) as grpc_client:
            over_grpc = grpc_client.predict(images, label="stable")
        np.testing.assert_allclose(rest[TARGET], over_grpc[TARGET], rtol=1e-6)


@pytest.mark.parametrize("argv, fragment", [
    (["serve"], "--model-base-path"),
    (["serve", "--model-base-path", "/no/such/dir"], "/no/such/dir"),
    (["serve", "--model-base-path", ".", "--labels", "stable"], "LABEL=VERSION"),
    (["serve", "--model-base-path", ".", "--max-batch-size", "8"], "--enable-batching"),
    (["serve", "--model-config-file", "/no/such/models.config"], "/no/such/models.config"),
    (["serve", "--model-base-path", ".", "--tensorflow-intra-op-parallelism", "-1"],
     "--tensorflow-intra-op-parallelism must be >= 0"),
])
def test_cli_errors_are_one_line(argv, fragment, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_tensorflow_threads_cannot_change_once_tensorflow_runs(base_path, capsys):
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TensorFlow is running in this process: its thread pools are fixed
    current = tf.config.threading.get_inter_op_parallelism_threads()
    argv = ["serve", "--model-base-path", str(base_path), "--port", "0", "--grpc-port", "-1",
            "--tensorflow-inter-op-parallelism", str(current + 3)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fresh `deeplense serve` process" in err[0]


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except ServingError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_large_bodies_give_the_models_exact_answers(batching_server):
    images = random_images(60, seed=8)  # ~80 kB of JSON, one request
    out = RestClient(batching_server.rest_url, MODEL_NAME).predict(images)
    np.testing.assert_allclose(out[TARGET], expected_outputs(images)[TARGET], rtol=1e-5, atol=1e-6)
