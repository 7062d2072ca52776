"""TF Serving's own REST test cases, run against the local server (issue 17).

Each test names the TF Serving test it translates (tensorflow/serving at 9d981c5c):

- ``json_tensor_test.cc`` (JT): JSON -> tensors, tensors -> JSON, Classify / Regress JSON;
- ``http_rest_api_handler_test.cc`` (HANDLER): URL routing, status codes and messages, on
  TF Serving's ``half_plus_two`` model (version 123, label ``Version_Label``);
- ``tensorflow_model_server_test.py`` (SERVER): the REST cases over HTTP, Prometheus.

Expected values and message fragments are TF Serving's; where a JT test compares a
TensorProto, the array (dtype, shape, values) is compared here.
"""

from __future__ import annotations

import http.client
import json
import math

import numpy as np
import pytest
from serving_fixtures import write_half_plus_two

from deeplense_tf.serving.config import ModelConfig
from deeplense_tf.serving.json_answers import encode_predict_response
from deeplense_tf.serving.json_tensors import (
    COLUMNAR,
    ROW,
    TensorInfo,
    parse_predict_body,
    request_inputs,
)
from deeplense_tf.serving.status import ServingError

MODEL = "saved_model_half_plus_two_2_versions"  # HANDLER's kTestModelName
VERSION = 123
LABEL = "Version_Label"


def _fill(body, infomap: dict[str, str]):
    """JT's FillPredictRequestFromJson: (inputs, format) or the ServingError."""
    spec = {name: TensorInfo(dtype, None) for name, dtype in infomap.items()}
    raw = body.encode() if isinstance(body, str) else body
    return request_inputs(parse_predict_body(raw), spec)


def _fill_error(body, infomap) -> ServingError:
    with pytest.raises(ServingError) as info:
        _fill(body, infomap)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.http_status == 400
    return info.value


def _same(got: np.ndarray, dtype, shape, values):
    assert got.dtype == np.dtype(dtype), got.dtype
    assert got.shape == tuple(shape), got.shape
    np.testing.assert_array_equal(got.ravel(), np.asarray(values, dtype=dtype))


# --- JT: FillPredictRequestFromJson


def test_jt_single_unnamed_tensor():  # JT SingleUnnamedTensor
    inputs, fmt = _fill('{"instances": [[1,2],[3,4],[5,6]]}', {"default": "DT_INT32"})
    assert fmt == ROW
    _same(inputs["default"], np.int32, (3, 2), [1, 2, 3, 4, 5, 6])


def test_jt_mixed_input_for_float_and_double_tensors():  # JT MixedInputFor{Float,Double}Tensor
    inputs, _ = _fill('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": "DT_FLOAT"})
    _same(inputs["default"], np.float32, (7,), [1, 2.0, 3, 4, 5.003, 0.007, 0.0])
    inputs, _ = _fill('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": "DT_DOUBLE"})
    _same(inputs["default"], np.float64, (7,), [1.0, 2, 3, 4, 0.662, 0, 0.0])


def test_jt_signature_name_and_non_terminated_buffer():
    # JT SingleUnnamedTensorWithSignature, TensorFromNonNullTerminatedBuffer
    request = parse_predict_body(b'{"signature_name": "predict_images", "instances": [[1,2]]}')
    assert request.signature_name == "predict_images"
    _same(request_inputs(request, {"default": TensorInfo("DT_INT32", None)})[0]["default"],
          np.int32, (1, 2), [1, 2])
    buffer = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    _same(_fill(buffer[:-1], {"default": "DT_INT32"})[0]["default"], np.int32, (3, 2),
          [1, 2, 3, 4, 5, 6])


def test_jt_base64_scalars_lists_and_named():
    # JT SingleUnnamedTensorBase64Scalars, ...Base64Lists, SingleNamedTensorBase64
    strings = {"default": "DT_STRING"}
    got = _fill('{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', strings)[0]["default"]
    assert got.shape == (2,) and got.tolist() == [b"hello", b"world"]
    got = _fill('{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', strings)[0]["default"]
    assert got.shape == (2, 1) and got.ravel().tolist() == [b"hello", b"world"]
    got = _fill('{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}',
                strings)[0]["default"]
    assert got.shape == (1, 2, 1) and got.ravel().tolist() == [b"hello", b"world"]


def test_jt_multiple_named_tensor():  # JT MultipleNamedTensor
    body = """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    inputs, fmt = _fill(body, {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING",
                               "float_tensor": "DT_FLOAT", "dbl_tensor": "DT_DOUBLE"})
    assert fmt == ROW and len(inputs) == 4
    _same(inputs["int_tensor"], np.int32, (2, 3, 2), [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])
    assert inputs["str_tensor"].shape == (2, 2)
    assert inputs["str_tensor"].ravel().tolist() == [b"foo", b"bar", b"baz", b"bat"]
    _same(inputs["float_tensor"], np.float32, (2, 2), [1.0, np.nan, 2.0, np.inf])
    _same(inputs["dbl_tensor"], np.float64, (2, 1), [np.nan, 2.0])


def test_jt_columnar_format():
    # JT SingleUnnamedTensorColumnarFormat, MultipleNamedTensorColumnarFormat
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        inputs, fmt = _fill(body, {"int_tensor": "DT_INT32"})
        assert fmt == COLUMNAR
        _same(inputs["int_tensor"], np.int32, (1, 3, 2), [1, 2, 3, 4, 5, 6])
    inputs, _ = _fill('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],'
                      ' "bin_tensor": {"b64": "aGVsbG8="}}}',
                      {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING", "bin_tensor": "DT_STRING"})
    # Different first dimensions (1, 2 and a scalar): columnar inputs need not share one.
    _same(inputs["int_tensor"], np.int32, (1, 3, 2), [1, 2, 3, 4, 5, 6])
    assert inputs["str_tensor"].tolist() == [b"foo", b"bar"]
    assert inputs["bin_tensor"].shape == () and inputs["bin_tensor"].item() == b"hello"


@pytest.mark.parametrize("body, fragment", [  # JT SingleUnnamedTensorErrors
    ("", "document is empty"),
    ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', "must be a string value"),
    ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}', "Not formatted correctly"),
    ('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size"),
    ('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape"),
    ('{"instances": [1, [1]]}', "Expecting shape"),
    ('{"instances": [[1,2],["a", "b"]]}', "not of expected type"),
])
def test_jt_single_unnamed_tensor_errors(body, fragment):
    assert fragment in _fill_error(body, {"default": "DT_INT32"}).message


@pytest.mark.parametrize("body, infomap, fragment", [  # JT MultipleNamedTensorErrors
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
     ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"}, "Expecting shape"),
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
     ' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"}, "Expecting tensor size"),
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
     ' [1, 20, 30], {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"}, "Expecting object but got list"),
    ('{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
     {"str_tensor": "DT_STRING"}, "Expecting value/list but got object"),
])
def test_jt_multiple_named_tensor_errors(body, infomap, fragment):
    assert fragment in _fill_error(body, infomap).message


def test_jt_floats_are_rounded_like_rapidjson_get_float():
    # AddValueToTensor: DT_FLOAT takes any JSON number (val.GetFloat()); issue 17 found the
    # local server refusing 2**24 + 1 and 1e39, which TF Serving rounds (to +-inf beyond range).
    inputs, _ = _fill('{"instances": [16777217, 1e39, -1e39, 3.4e38]}', {"x": "DT_FLOAT"})
    _same(inputs["x"], np.float32, (4,), [16777216.0, np.inf, -np.inf, 3.4e38])
    inputs, _ = _fill(json.dumps({"instances": [[1, 2], [3, 2**70]]}), {"x": "DT_FLOAT"})
    assert inputs["x"][1, 1] == np.float32(2.0**70)
    inputs, _ = _fill('{"inputs": {"a": [1e39], "b": [1, 2]}}', {"a": "DT_FLOAT", "b": "DT_DOUBLE"})
    assert inputs["a"][0] == np.inf and inputs["b"].tolist() == [1.0, 2.0]


# --- JT: MakeJsonFromTensors


def _json(outputs, fmt=ROW):
    return encode_predict_response(outputs, fmt).decode()


def test_jt_from_json_single_tensor_and_scalars():
    # JT FromJsonSingleTensor, FromJsonSingleScalarTensor
    ints = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2], np.int32).reshape(2, 3, 2)
    want = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert json.loads(_json({"int_tensor": ints})) == {"predictions": want}
    assert json.loads(_json({"int_tensor": ints}, COLUMNAR)) == {"outputs": want}
    five = np.arange(1, 6, dtype=np.int32)
    assert json.loads(_json({"int_tensor": five})) == {"predictions": [1, 2, 3, 4, 5]}
    assert json.loads(_json({"int_tensor": five}, COLUMNAR)) == {"outputs": [1, 2, 3, 4, 5]}


def test_jt_from_json_single_bytes_tensor():  # JT FromJsonSingleBytesTensor
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    assert json.loads(_json({"str_tensor_bytes": strings})) == {"predictions": [
        [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}


def test_jt_float_six_digit_precision_exact_text():
    # JT FromJsonSingleFloatTensorSixDigitPrecision compares the numbers as strings.
    values = np.array([9000000, 999999, 0.50000, .0003, .00003, 555557.5], np.float32).reshape(2, 3)
    assert _json({"float_tensor": values}) == (
        '{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')


def test_jt_float_non_finite_exact_text():  # JT FromJsonSingleFloatTensorNonFinite
    values = np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)
    assert _json({"float_tensor": values}) == '{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}'


def test_jt_from_json_single_tensor_errors():  # JT FromJsonSingleTensorErrors
    with pytest.raises(ServingError, match="empty tensor map"):
        encode_predict_response({}, ROW)
    with pytest.raises(ServingError, match="tensor type: complex64") as info:
        encode_predict_response({"tensor": np.array([1, 2], np.complex64)}, ROW)
    assert info.value.http_status == 400  # issue 17: this was a 500
    with pytest.raises(ServingError, match="no shape information"):
        encode_predict_response({"tensor": np.int32(1)}, ROW)


def test_jt_from_json_multiple_named_tensors():  # JT FromJsonMultipleNamedTensors
    outputs = {
        "int_tensor": np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2], np.int32).reshape(2, 3, 2),
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "double_scalar_tensor": np.array([8.0, 9.0]),
        "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object),
    }
    assert json.loads(_json(outputs)) == {"predictions": [
        {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
         "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
        {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
         "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]},
    ]}
    assert json.loads(_json(outputs, COLUMNAR)) == {"outputs": {
        "double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],
        "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
        "str_tensor": [["foo", "bar"], ["baz", "bat"]],
        "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                             [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}}


def test_jt_zero_batch_tensors():
    # JT FromJsonMultipleNamedTensorsErrors, FromJsonSingleZeroBatchTensor,
    # FromJsonMultipleZeroBatchTensors, FromJsonMultipleZeroBatchTensorsErrors
    with pytest.raises(ServingError, match="inconsistent batch size"):
        encode_predict_response({"int_tensor": np.zeros((2, 3), np.int32),
                                 "str_tensor": np.array([[b"foo", b"bar", b"baz"]], dtype=object)}, ROW)
    assert json.loads(_json({"int_tensor": np.zeros((0, 2), np.int32)})) == {"predictions": []}
    assert json.loads(_json({"str_tensor": np.zeros((0, 1, 2), dtype=object),
                             "float_tensor": np.zeros((0, 3, 4), np.float32)})) == {"predictions": []}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        encode_predict_response({"int_tensor": np.zeros((0, 2), np.int32),
                                 "str_tensor": np.array([[b"foo", b"bar"]], dtype=object)}, ROW)


# --- JT: Classify / Regress JSON


def _examples(body: str):
    from tensorflow.core.example import example_pb2

    from deeplense_tf.serving.examples_json import parse_examples_body

    request = parse_examples_body(body.encode())
    return request.signature_name, [example_pb2.Example.FromString(e) for e in request.examples]


def _features(example) -> dict:
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, list(getattr(feature, kind).value))
    return out


def test_jt_classify_regress_request_no_context():  # JT ClassifyRegressRequestTest.RequestNoContext
    _, examples = _examples('{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},'
                            ' {"names": ["baz"], "ratings": 6.0}]}')
    assert _features(examples[0]) == {"names": ("bytes_list", [b"foo", b"bar"]),
                                      "ratings": ("float_list", [8.0, 9.0]),
                                      "age": ("int64_list", [20])}
    assert _features(examples[1]) == {"names": ("bytes_list", [b"baz"]),
                                      "ratings": ("float_list", [6.0])}


def test_jt_classify_regress_request_with_context_and_signature():
    # JT ClassifyRegressRequestTest.RequestWithContextAndSignature; the context is merged
    # into every example, as TF Serving serializes an ExampleListWithContext.
    signature, examples = _examples(
        '{"signature_name": "custom_signture", "context": {"query": "pizza", "location": ["sfo"]},'
        ' "examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},'
        ' {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]},'
        ' {"names": "bar", "ratings": -Infinity}]}')
    assert signature == "custom_signture" and len(examples) == 3
    first = _features(examples[0])
    assert first["query"] == ("bytes_list", [b"pizza"]) and first["location"] == ("bytes_list", [b"sfo"])
    assert first["ratings"][1][:2] == [8.0, 9.0] and math.isnan(first["ratings"][1][2])
    assert first["ratings"][1][3] == math.inf and first["age"] == ("int64_list", [20])
    second = _features(examples[1])
    assert second["names"] == ("bytes_list", [b"baz", b"hello"])
    assert second["intboolmix"] == ("int64_list", [1, 1, 0])
    assert _features(examples[2])["ratings"] == ("float_list", [-math.inf])


@pytest.mark.parametrize("body, fragment", [  # JT ClassifyRegressRequestTest.JsonErrors
    ('{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',
     "'signature_name' key must be a string"),
    ('{"context": [{"names": ["foo", "bar"]}]}', "Example must be JSON object"),
    ('{"examples": {"names": ["foo", "bar"]}}', "list/array"),
    ('{"examples": [[{"names": ["foo", "bar"]}]]}', "Example must be JSON object"),
    ('{"examples": [{"names": [10, null]}]}', "names has element with unexpected JSON type: Null"),
    ('{"examples": [{"names": [10, 10.0]}]}', "feature: names expecting type: int64"),
    ('{"examples": [{"names": [10, {"test": 10}]}]}', "names has element with unexpected JSON type: Object"),
    ('{"examples": [{"names": [[10], 20]}]}', "names has element with unexpected JSON type: Array"),
    ('{"examples": [{"names": [20, 18446744073709551603]}]}', "Only int64_t is supported"),
    ('{"signature_name": "x"}', "key 'examples' is expected and was not found"),
    ('{"examples": []}', "'examples' value is an empty array"),
])
def test_jt_classify_regress_json_errors(body, fragment):
    with pytest.raises(ServingError) as info:
        _examples(body)
    assert info.value.code == "INVALID_ARGUMENT" and fragment in info.value.message


def test_jt_classification_and_regression_results():
    # JT JsonFromClassificationResult, JsonFromRegressionResult(WithNonFinite), JsonFromResultErrors
    from deeplense_tf.serving.examples_json import encode_classify_results, encode_regress_results

    classes = [[(b"car", 0.2), (b"bike", 0.7), (b"bus", 0.1)], [(b"car", 0.7), (b"bike", 0.1), (b"bus", 0.2)]]
    assert json.loads(encode_classify_results(
        [[(label, float(np.float32(score))) for label, score in c] for c in classes])) == {"results": [
            [["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]}
    values = [float(np.float32(v)) for v in (0.2, 0.9, 1.0)]
    assert json.loads(encode_regress_results(values)) == {"results": [0.2, 0.9, 1.0]}
    text = encode_regress_results([0.2, math.inf, 1.0, -math.inf, math.nan]).decode()
    assert text == '{"results": [0.2, Infinity, 1.0, -Infinity, NaN]}'
    with pytest.raises(ServingError, match="empty ClassificationResults"):
        encode_classify_results([])
    with pytest.raises(ServingError, match="empty RegressionResults"):
        encode_regress_results([])


def test_jt_error_json():  # JT MakeJsonFromTensors.StatusError
    from deeplense_tf.serving.rest_api import error_body

    assert json.loads(error_body('Bad key: "key"')) == {"error": 'Bad key: "key"'}
    assert json.loads(error_body("Bad key: 'key'")) == {"error": "Bad key: 'key'"}


# --- HANDLER: the REST handler on half_plus_two


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory):
    base = tmp_path_factory.mktemp("half-plus-two") / MODEL
    write_half_plus_two(base, VERSION)
    return base


@pytest.fixture(scope="module")
def api(half_plus_two):
    from deeplense_tf.serving.model_store import ModelStore
    from deeplense_tf.serving.rest_api import RestApi

    store = ModelStore([ModelConfig(MODEL, half_plus_two, labels={LABEL: VERSION},
                                    version_policy="specific", specific_versions=(VERSION,))],
                       poll_interval_s=0).start()
    yield RestApi(store, prometheus_path="/monitoring/prometheus/metrics")
    store.close()


def _call(api, method, path, body=""):
    status, payload = api.handle(method, path, body.encode() if isinstance(body, str) else body)
    return status, json.loads(payload)


@pytest.mark.parametrize("method, path, fragment", [  # HANDLER UnsupportedApiCalls
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_handler_unsupported_api_calls(api, method, path, fragment):
    status, doc = _call(api, method, path)
    assert status == 400 and fragment in doc["error"]


@pytest.mark.parametrize("path", [  # HANDLER PredictModelNameVersionErrors
    "/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{MODEL}99:predict"])
def test_handler_predict_model_name_version_errors(api, path):
    status, _ = _call(api, "POST", path, '{ "instances": [1] }')
    assert status == 404


@pytest.mark.parametrize("path, body, fragment", [  # HANDLER PredictRequestErrors
    (f"/v1/models/{MODEL}:predict", "", "JSON Parse error: The document is empty"),
    (f"/v1/models/{MODEL}:predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
    (f"/v1/models/{MODEL}:predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
    (f"/v1/models/{MODEL}/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }',
     "Unrecognized servable version label"),
    (f"/v1/models/{MODEL}:predict", '{ "signature_name": 100 }',
     "'signature_name' key must be a string value."),
])
def test_handler_predict_request_errors(api, path, body, fragment):
    status, doc = _call(api, "POST", path, body)
    assert status == 400 and fragment in doc["error"]


@pytest.mark.parametrize("path, body, want", [  # HANDLER Predict
    (f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),  # a [-1, 1] input given [2, 2]: passed on
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict", '{"instances": [1.0, 2.0]}',
     {"predictions": [2.5, 3.0]}),
    (f"/v1/models/{MODEL}/labels/{LABEL}:predict", '{"instances": [1.0, 2.0]}',
     {"predictions": [2.5, 3.0]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict",
     '{"signature_name": "serving_default", "instances": [3.0, 4.0]}', {"predictions": [3.5, 4.0]}),
    (f"/v1/models/{MODEL}/versions/{VERSION}:predict",
     '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', {"outputs": [3.5, 4.0]}),
])
def test_handler_predict(api, path, body, want):
    status, doc = _call(api, "POST", path, body)
    assert (status, doc) == (200, want)


@pytest.mark.parametrize("path", [  # HANDLER Regress
    f"/v1/models/{MODEL}:regress", f"/v1/models/{MODEL}/versions/{VERSION}:regress",
    f"/v1/models/{MODEL}/labels/{LABEL}:regress"])
def test_handler_regress(api, path):
    status, doc = _call(api, "POST", path,
                        '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }')
    assert (status, doc) == (200, {"results": [42]})


@pytest.mark.parametrize("path, x, want", [  # HANDLER Classify
    (f"/v1/models/{MODEL}:classify", 20.0, {"results": [[["", 12]]]}),
    (f"/v1/models/{MODEL}/labels/{LABEL}:classify", 10.0, {"results": [[["", 7]]]}),
])
def test_handler_classify(api, path, x, want):
    status, doc = _call(api, "POST", path,
                        json.dumps({"signature_name": "classify_x_to_y", "examples": [{"x": x}]}))
    assert (status, doc) == (200, want)


def test_handler_get_status(api):  # HANDLER GetStatus
    want = {"model_version_status": [{"version": str(VERSION), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/{VERSION}",
                 f"/v1/models/{MODEL}/labels/{LABEL}"):
        assert _call(api, "GET", path) == (200, want)


def test_handler_get_model_metadata(api):
    # HANDLER GetModelMetadata compares with saved_model_half_plus_two_2_versions_metadata.json;
    # its serving_default entry, which this fixture reproduces, is checked field by field.
    status, doc = _call(api, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": MODEL, "signature_name": "", "version": str(VERSION)}
    default = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict" and default["defaults"] == {}
    x = default["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["name"] == "x:0"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                                 "unknown_rank": False}
    regress = doc["metadata"]["signature_def"]["signature_def"]["regress_x_to_y"]
    assert regress["method_name"] == "tensorflow/serving/regress"


# --- issue 17: what TF Serving passes on and the local server refused


def test_columnar_inputs_with_different_first_dimensions(api):
    # api_rest.md: in the columnar format the named inputs need not share a first dimension.
    status, doc = _call(api, "POST", f"/v1/models/{MODEL}:predict",
                        '{"signature_name": "two_inputs", "inputs": {"a": [1, 2, 3], "b": [10]}}')
    assert (status, doc) == (200, {"outputs": {"sum_a": 6.0, "sum_b": 10.0}})


def test_zero_row_output_is_an_empty_prediction_list(api):  # JT FromJsonSingleZeroBatchTensor
    status, doc = _call(api, "POST", f"/v1/models/{MODEL}:predict",
                        '{"signature_name": "none_out", "instances": [[1.0], [2.0]]}')
    assert (status, doc) == (200, {"predictions": []})


def test_complex_output_is_400(api):  # JT FromJsonSingleTensorErrors, through the handler
    status, doc = _call(api, "POST", f"/v1/models/{MODEL}:predict",
                        '{"signature_name": "complex_out", "instances": [[1.0]]}')
    assert status == 400 and "Failed to write JSON value for tensor type: complex64" in doc["error"]


def test_classify_with_classes_and_scores(api):
    status, doc = _call(api, "POST", f"/v1/models/{MODEL}:classify",
                        '{"signature_name": "classify_with_classes", "context": {"y": 1},'
                        ' "examples": [{"x": 2.0}, {"x": 4.0}]}')
    assert (status, doc) == (200, {"results": [[["half", 3.0], ["double", 6.0]],
                                               [["half", 4.0], ["double", 8.0]]]})


@pytest.mark.parametrize("verb, signature, fragment", [
    # classifier.cc / regressor.cc PreProcess*: a predict signature has no "inputs" key.
    ("classify", "serving_default", "No classification inputs found in SignatureDef"),
    ("regress", "serving_default", "No regression inputs found in SignatureDef"),
    ("regress", "classify_with_classes", "Expected one output Tensor."),
    ("classify", "nope", "No signature was found with the name: nope"),
])
def test_classify_regress_on_the_wrong_signature(api, verb, signature, fragment):
    status, doc = _call(api, "POST", f"/v1/models/{MODEL}:{verb}",
                        json.dumps({"signature_name": signature, "examples": [{"x": 1.0}]}))
    assert status == 400 and fragment in doc["error"]


def test_metrics_count_requests_by_model_version_api_and_status(api):
    metrics = api.store.metrics
    before = metrics.request_count(model_name=MODEL, API="regress", status="OK")
    _call(api, "POST", f"/v1/models/{MODEL}:regress",
          '{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}')
    _call(api, "POST", f"/v1/models/{MODEL}:regress", '{"examples": []}')
    assert metrics.request_count(model_name=MODEL, API="regress", status="OK",
                                 model_version=VERSION, entrypoint="REST") == before + 1
    assert metrics.request_count(model_name=MODEL, API="regress", status="INVALID_ARGUMENT") >= 1


# --- SERVER: tensorflow_model_server_test.py's REST cases, over HTTP


@pytest.fixture(scope="module")
def http_server(half_plus_two, tmp_path_factory):
    from deeplense_tf.cli import build_parser
    from deeplense_tf.serving.serve_cli import build_server

    config = tmp_path_factory.mktemp("monitoring") / "monitoring_config.txt"
    # TF Serving's testdata/monitoring_config.txt, verbatim.
    config.write_text('prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    args = build_parser(only="serve").parse_args([
        "serve", "--model-base-path", str(half_plus_two), "--model-name", "default",
        "--port", "0", "--grpc-port", "0", "--file-system-poll-wait-seconds", "0",
        "--monitoring-config-file", str(config), "--enable-batching"])
    server = build_server(args).start()
    yield server
    server.stop()


def _rest(server, path, doc=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        body = None if doc is None else json.dumps(doc)
        conn.request("POST" if doc is not None else "GET", path, body=body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path, doc, want", [
    ("/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [[["", 3.0]]]}),  # SERVER testClassifyREST
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [3.0]}),  # SERVER testRegressREST
    ("/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]},
     {"predictions": [3.0, 3.5, 4.0]}),  # SERVER testPredictREST
    ("/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]},
     {"outputs": [3.0, 3.5, 4.0]}),  # SERVER testPredictColumnarREST
])
def test_server_rest_cases(http_server, path, doc, want):
    status, content_type, data = _rest(http_server, path, doc)
    assert status == 200 and content_type == "application/json"
    assert json.loads(data) == want


def test_server_get_status_rest(http_server):  # SERVER testGetStatusREST
    status, _, data = _rest(http_server, "/v1/models/default")
    assert status == 200 and json.loads(data) == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_server_grpc_classify_and_regress(http_server):
    # The same Classify / Regress over gRPC (tensorflow_model_server_test.py testClassify,
    # testRegress use half_plus_two's x=2 -> 3).
    import grpc
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    example = example_pb2.Example(features=feature_pb2.Features(feature={
        "x": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[2.0]))}))
    with grpc.insecure_channel(http_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "classify_x_to_y"
        request.input.example_list.examples.add().CopyFrom(example)
        result = stub.Classify(request, timeout=30)
        assert result.result.classifications[0].classes[0].score == 3.0
        assert result.model_spec.version.value == VERSION
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        request.input.example_list.examples.add().CopyFrom(example)
        assert stub.Regress(request, timeout=30).result.regressions[0].value == 3.0


def _scrape(server) -> tuple[str, dict[str, float]]:
    status, content_type, data = _rest(server, "/monitoring/prometheus/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = data.decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return text, samples


def test_server_prometheus_endpoint(http_server):
    # SERVER testPrometheusEndpoint asserts "# TYPE" in the answer; the series it should hold
    # (issue 17) are checked too, as differences over a few requests of each kind.
    _, before = _scrape(http_server)
    for _ in range(3):
        _rest(http_server, "/v1/models/default:predict", {"instances": [[2.0], [3.0]]})
    _rest(http_server, "/v1/models/default:predict", {"instances": [["x"]]})
    _rest(http_server, "/v1/models/default:regress",
          {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    text, after = _scrape(http_server)
    assert "# TYPE" in text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    labels = 'model_name="default",model_version="{v}",API="{api}",entrypoint="REST",status="{s}"'

    def grew(series):
        return after.get(series, 0) - before.get(series, 0)

    ok_predict = labels.format(v=123, api="predict", s="OK")
    assert grew(f":tensorflow:serving:request_count{{{ok_predict}}}") == 3
    assert grew(":tensorflow:serving:request_count{"
                + labels.format(v=123, api="predict", s="INVALID_ARGUMENT") + "}") == 1
    ok_regress = labels.format(v=123, api="regress", s="OK")
    assert grew(f":tensorflow:serving:request_latency_count{{{ok_regress}}}") == 1
    assert grew(f':tensorflow:serving:request_latency_bucket{{{ok_predict},le="+Inf"}}') == 3
    assert after[f":tensorflow:serving:request_latency_sum{{{ok_predict}}}"] > 0
    # Batching is on: every model call's rows are in the batch-size histogram.
    batch = ':tensorflow:serving:batching_session:processed_batch_size_sum{model_name="default",' \
            'model_version="123"}'
    assert grew(batch) >= 6  # three requests of two rows


def test_metrics_endpoint_is_off_without_a_monitoring_config(api, half_plus_two):
    from deeplense_tf.serving.rest_api import RestApi

    status, _ = RestApi(api.store).handle("GET", "/monitoring/prometheus/metrics", b"")
    assert status == 404
