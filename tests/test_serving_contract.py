"""Contract tests: the clients against the local server (with and without batching), and the
very same tests against a real TF Serving when DEEPLENSE_TFSERVING_URL is set.

For a real TF Serving, serve the fixture models (see tests/serving_fixtures.py)::

    python tests/serving_fixtures.py /tmp/tfs
    docker run --rm -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 -v /tmp/tfs:/models \\
        tensorflow/serving --model_config_file=/models/models.config
    DEEPLENSE_TFSERVING_URL=http://127.0.0.1:8501 pytest tests/test_serving_contract.py

DEEPLENSE_TFSERVING_GRPC (host:port) overrides the gRPC address (default: the URL's host, 8500).
Tests marked `local_only` check what TF Serving does not promise (status by label, our 413).
"""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pytest
from serving_fixtures import (
    LABELS,
    MODEL_NAME,
    TARGET,
    VERSION_SCALES,
    expected_embedding,
    expected_outputs,
    random_images,
    write_fixture_models,
)

from deeplense_tf.serving.status import ServingError

REMOTE_URL = os.environ.get("DEEPLENSE_TFSERVING_URL")
LATEST = max(VERSION_SCALES)


@dataclass
class Endpoint:
    kind: str
    rest_url: str
    grpc_target: str
    server: object = None  # the local ModelServer, None for a real TF Serving

    @property
    def local(self) -> bool:
        return self.server is not None


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-contract")
    write_fixture_models(root)
    return root


# The real TF Serving joins the parameters only when configured (one skip below says so).
ENDPOINTS = ["local", "local-batching"] + (["tfserving"] if REMOTE_URL else [])


def test_real_tf_serving_is_configured():
    if not REMOTE_URL:
        pytest.skip("DEEPLENSE_TFSERVING_URL is not set: the contract ran against the local "
                    "server only")


@pytest.fixture(scope="module", params=ENDPOINTS)
def endpoint(request, fixture_root):
    if request.param == "tfserving":
        grpc_target = os.environ.get("DEEPLENSE_TFSERVING_GRPC") or f"{urlsplit(REMOTE_URL).hostname}:8500"
        yield Endpoint("tfserving", REMOTE_URL.rstrip("/"), grpc_target)
        return
    from deeplense_tf.serving.batching import BatchingOptions
    from deeplense_tf.serving.config import read_model_config_file
    from deeplense_tf.serving.model_store import ModelStore
    from deeplense_tf.serving.server import ModelServer

    batching = None
    if request.param == "local-batching":
        batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=2)
    store = ModelStore(read_model_config_file(fixture_root / "models.config"),
                       poll_interval_s=0, batching=batching)
    server = ModelServer(store, rest_port=0, grpc_port=0, max_request_bytes=1 << 20).start()
    yield Endpoint(request.param, server.rest_url, server.grpc_target, server)
    server.stop()


@pytest.fixture(params=["rest", "grpc"])
def client(request, endpoint):
    if request.param == "rest":
        from deeplense_tf.serving.rest_client import RestClient

        made = RestClient(endpoint.rest_url, MODEL_NAME, timeout=30, retries=2, backoff_s=0.05)
    else:
        from deeplense_tf.serving.grpc_client import GrpcClient

        made = GrpcClient(endpoint.grpc_target, MODEL_NAME, timeout=30, retries=2, backoff_s=0.05)
    made.kind = request.param
    yield made
    made.close()


def _assert_outputs(out, images, scale):
    want = expected_outputs(images, scale)
    assert set(out) == set(want)
    for name, value in want.items():
        assert out[name].dtype == np.float32 and out[name].shape == (len(images),)
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)


def _raw(endpoint, method, path, body=None):
    """One REST request with arbitrary bytes; (status, JSON answer)."""
    parts = urlsplit(endpoint.rest_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# --- status and metadata


def test_status_lists_the_served_versions(client):
    states = {s["version"]: s for s in client.status()}
    assert set(VERSION_SCALES) <= set(states)
    assert all(states[v]["state"] == "AVAILABLE" and states[v]["error_code"] == "OK"
               for v in VERSION_SCALES)
    assert [s["version"] for s in client.status(version=1)] == [1]


def test_status_by_label_resolves_the_version(client, endpoint):
    if not endpoint.local:
        pytest.skip("TF Serving's GetModelStatus ignores labels in some versions")
    assert [s["version"] for s in client.status(label="stable")] == [LABELS["stable"]]


def test_status_of_unknown_model_or_version_is_not_found(client, endpoint):
    client.model = "no_such_model"
    with pytest.raises(ServingError) as info:
        client.status()
    assert info.value.code == "NOT_FOUND" and info.value.http_status == 404
    assert "no_such_model" in info.value.message
    client.model = MODEL_NAME
    with pytest.raises(ServingError) as info:
        client.status(version=99)
    assert info.value.code == "NOT_FOUND" and "99" in info.value.message


def test_metadata_describes_the_export_contract(client):
    meta = client.metadata()
    assert meta["name"] == MODEL_NAME and meta["version"] == LATEST
    default = meta["signatures"]["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"] == {"image": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}}
    assert default["outputs"] == {TARGET: {"dtype": "DT_FLOAT", "shape": [-1]},
                                  f"{TARGET}_std": {"dtype": "DT_FLOAT", "shape": [-1]}}
    assert meta["signatures"]["embed"]["outputs"] == {"embedding": {"dtype": "DT_FLOAT", "shape": [-1, 3]}}
    assert client.metadata(version=1)["version"] == 1
    assert client.metadata(label="canary")["version"] == LABELS["canary"]


# --- predict


@pytest.mark.parametrize("version, label, scale", [
    (None, None, VERSION_SCALES[LATEST]),
    (1, None, VERSION_SCALES[1]),
    (2, None, VERSION_SCALES[2]),
    (None, "stable", VERSION_SCALES[LABELS["stable"]]),
    (None, "canary", VERSION_SCALES[LABELS["canary"]]),
])
def test_predict_latest_version_and_labels(client, version, label, scale):
    images = random_images(3, seed=version or 7)
    _assert_outputs(client.predict(images, version=version, label=label), images, scale)


def test_predict_columnar_and_named_row_formats(client, endpoint):
    if client.kind != "rest":
        pytest.skip("row / columnar is a REST distinction")
    images = random_images(4, seed=3)
    scale = VERSION_SCALES[LATEST]
    _assert_outputs(client.predict(images, columnar=True), images, scale)
    _assert_outputs(client.predict({"image": images}), images, scale)
    _assert_outputs(client.predict({"image": images}, columnar=True), images, scale)


def test_embed_signature_single_output_keeps_its_name(client):
    images = random_images(2, seed=5)
    out = client.predict(images, signature="embed", version=1)
    assert list(out) == ["embedding"]
    np.testing.assert_allclose(out["embedding"], expected_embedding(images, VERSION_SCALES[1]),
                               rtol=1e-5, atol=1e-6)


def test_nan_and_infinite_pixels_are_invalid_argument(client):
    for bad, word in ((np.nan, "NaN"), (np.inf, "Inf")):
        images = random_images(2, seed=1)
        images[1, 3, 4, 0] = bad
        with pytest.raises(ServingError) as info:
            client.predict(images)
        assert info.value.code == "INVALID_ARGUMENT" and info.value.http_status == 400
        assert word in info.value.message


def test_wrong_image_size_is_invalid_argument(client):
    with pytest.raises(ServingError) as info:
        client.predict(random_images(2, image_size=6))
    assert info.value.code == "INVALID_ARGUMENT" and info.value.http_status == 400


def test_unknown_model_version_label_and_signature(client):
    images = random_images(1)
    with pytest.raises(ServingError) as info:
        client.predict(images, version=99)
    assert (info.value.code, info.value.http_status) == ("NOT_FOUND", 404)
    assert f"Specific({MODEL_NAME}, 99)" in info.value.message
    with pytest.raises(ServingError) as info:
        client.predict(images, label="no_such_label")
    assert info.value.http_status == 400
    assert "Unrecognized servable version label: no_such_label" in info.value.message
    with pytest.raises(ServingError) as info:
        client.predict(images, signature="no_such_signature")
    assert info.value.http_status == 400 and "no_such_signature" in info.value.message
    client.model = "no_such_model"
    with pytest.raises(ServingError) as info:
        client.predict(images)
    assert info.value.code == "NOT_FOUND" and "Latest(no_such_model)" in info.value.message


# --- the REST API's bad bodies (TF Serving's own messages)

GOOD_INSTANCE = random_images(1).tolist()


@pytest.mark.parametrize("method, path, body, status, fragment", [
    ("POST", "/v1/models/deeplense:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/deeplense:predict", b"", 400, "JSON Parse error"),
    ("POST", "/v1/models/deeplense:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/deeplense:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("POST", "/v1/models/deeplense:predict", {"instances": [[[["x"]]]]}, 400,
     "is not of expected type: float"),
    ("POST", "/v1/models/deeplense:predict", {"instances": GOOD_INSTANCE, "inputs": GOOD_INSTANCE},
     400, "only one of 'inputs' or 'instances'"),
    ("POST", "/v1/models/deeplense/labels/nope:predict", {"instances": GOOD_INSTANCE}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/deeplense/versions/42:predict", {"instances": GOOD_INSTANCE}, 404,
     "Servable not found for request: Specific(deeplense, 42)"),
    ("GET", "/v1/models/nope", None, 404, "nope"),
    ("GET", "/v1/models/deeplense/versions/42/metadata", None, 404, "Specific(deeplense, 42)"),
])
def test_rest_errors_are_tf_serving_json(endpoint, method, path, body, status, fragment):
    got_status, doc = _raw(endpoint, method, path, body)
    assert got_status == status
    assert set(doc) == {"error"} and fragment in doc["error"]


def test_rest_status_json_shape(endpoint):
    status, doc = _raw(endpoint, "GET", "/v1/models/deeplense/versions/1")
    assert status == 200
    assert doc == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                             "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_predict_json_shape(endpoint):
    images = random_images(2, seed=9)
    status, rows = _raw(endpoint, "POST", "/v1/models/deeplense/versions/1:predict",
                        {"instances": images.tolist()})
    assert status == 200 and len(rows["predictions"]) == 2
    assert set(rows["predictions"][0]) == {TARGET, f"{TARGET}_std"}
    status, cols = _raw(endpoint, "POST", "/v1/models/deeplense/versions/1:predict",
                        {"signature_name": "embed", "inputs": images.tolist()})
    assert status == 200 and np.asarray(cols["outputs"]).shape == (2, 3)  # single output: no name
