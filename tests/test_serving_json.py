"""TF Serving's JSON tensor encoding (deeplense_tf/serving/json_tensors.py): no TensorFlow needed."""

import json

import numpy as np
import pytest

from deeplense_tf.serving.json_answers import encode_predict_response, json_to_output, to_json_value
from deeplense_tf.serving.json_tensors import (
    COLUMNAR,
    ROW,
    TensorInfo,
    json_to_array,
    parse_predict_body,
    request_inputs,
)
from deeplense_tf.serving.status import ServingError

IMAGE = {"image": TensorInfo("DT_FLOAT", (None, 2, 2, 1))}
TWO_INPUTS = {"image": TensorInfo("DT_FLOAT", (None, 2)), "mask": TensorInfo("DT_INT32", (None,))}


def _inputs(body, spec=IMAGE):
    return request_inputs(parse_predict_body(json.dumps(body).encode()), spec)


def _error(body, spec=IMAGE) -> ServingError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ServingError) as info:
        request_inputs(parse_predict_body(raw), spec)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.http_status == 400
    return info.value


def test_row_and_columnar_give_the_same_float32_batch():
    images = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1) / 3
    rows, fmt_rows = _inputs({"instances": images.tolist()})
    named, _ = _inputs({"instances": [{"image": im} for im in images.tolist()]})
    cols, fmt_cols = _inputs({"inputs": images.tolist()})
    cols_named, _ = _inputs({"inputs": {"image": images.tolist()}})
    assert (fmt_rows, fmt_cols) == (ROW, COLUMNAR)
    for got in (rows, named, cols, cols_named):
        assert got["image"].dtype == np.float32
        np.testing.assert_array_equal(got["image"], images)


def test_nan_and_infinity_are_accepted_in_json():
    body = b'{"instances": [[[[NaN], [Infinity]], [[-Infinity], [1]]]]}'
    arr = request_inputs(parse_predict_body(body), IMAGE)[0]["image"]
    assert np.isnan(arr[0, 0, 0, 0]) and arr[0, 0, 1, 0] == np.inf and arr[0, 1, 0, 0] == -np.inf


@pytest.mark.parametrize("body, fragment", [
    (b"", "JSON Parse error: The document is empty"),
    (b"{not json", "JSON Parse error"),
    (b"[1, 2]", "Is not object"),
    (b'{"signature_name": 3, "instances": [1]}', "'signature_name' key must be a string value"),
])
def test_unparseable_bodies_get_tf_serving_messages(body, fragment):
    with pytest.raises(ServingError) as info:
        parse_predict_body(body)
    assert info.value.code == "INVALID_ARGUMENT" and fragment in info.value.message


@pytest.mark.parametrize("body, fragment", [
    ({"instances": []}, "No values in 'instances' array"),
    ({"instances": 3}, "to be an list/array"),
    ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
    ({"instances": [1], "inputs": [1]}, "expecting only one of 'inputs' or 'instances'"),
    ({"instances": [[[["a"], [1]], [[1], [1]]]]}, 'JSON Value: "a" Type: String is not of expected type: float'),
    ({"instances": [[[[True], [1]], [[1], [1]]]]}, "Type: True is not of expected type: float"),
    ({"instances": [[[[None], [1]], [[1], [1]]]]}, "Type: Null is not of expected type: float"),
    ({"instances": [[[[{"b64": "AA=="}], [1]], [[1], [1]]]]}, "Type: Object is not of expected type: float"),
    ({"instances": [[[[1], [1]], [[1], [1]]], [[[1], [1]]]]}, "Failed to process element: 1 of 'instances' list"),
    ({"inputs": [[1, 2], [3]]}, "Encountered list at unexpected size"),
    ({"inputs": [[[1], 2], [3, 4]]}, "found at incorrect level"),
    ({"instances": [{"image": [1]}, [1]]}, "Expecting object but got list at item 1"),
    ({"instances": [{"image": [1], "extra": [2]}]}, "does not have named input: extra"),
])
def test_bad_values_get_tf_serving_messages(body, fragment):
    assert fragment in _error(body).message


def test_multiple_inputs_need_named_objects():
    assert "expecting list of objects" in _error({"instances": [[1, 2]]}, TWO_INPUTS).message
    assert "Missing named input: mask" in _error({"inputs": {"image": [[1, 2]]}}, TWO_INPUTS).message
    assert "keys must be equal to: image,mask" in _error(
        {"instances": [{"image": [1, 2]}]}, TWO_INPUTS).message
    got, _ = _inputs({"instances": [{"image": [1, 2], "mask": 3}, {"image": [4, 5], "mask": -1}]},
                     TWO_INPUTS)
    assert got["mask"].dtype == np.int32 and got["mask"].tolist() == [3, -1]
    assert "is not of expected type: int32" in _error(
        {"inputs": {"image": [[1, 2]], "mask": [1.5]}}, TWO_INPUTS).message


def test_strings_and_b64():
    spec = {"text": TensorInfo("DT_STRING", (None,))}
    got, _ = _inputs({"instances": ["abc", {"b64": "AAEC"}]}, spec)
    assert got["text"].tolist() == [b"abc", b"\x00\x01\x02"]
    assert "Unable to base64 decode" in _error({"instances": [{"b64": "!!"}]}, spec).message


def test_json_to_array_checks_integers_exactly():
    assert json_to_array([1, 2**24 - 1], "DT_FLOAT", strict=False).dtype == np.float32
    # TF Serving rounds to float32 (rapidjson GetFloat); issue 17, test_serving_rest_parity.py.
    assert json_to_array([2**24 + 1], "DT_FLOAT", strict=False).tolist() == [2.0**24]
    with pytest.raises(ServingError, match="not of expected type: int8"):
        json_to_array([300], "DT_INT8")


def test_response_formats_and_single_output_name_is_dropped():
    outputs = {"theta": np.array([0.2, np.nan], np.float32), "theta_std": np.array([1, 2], np.float32)}
    rows = json.loads(encode_predict_response(outputs, ROW))
    assert rows["predictions"][0] == {"theta": 0.2, "theta_std": 1.0}
    assert np.isnan(rows["predictions"][1]["theta"]) and rows["predictions"][1]["theta_std"] == 2.0
    cols = json.loads(encode_predict_response(outputs, COLUMNAR))
    assert cols["outputs"]["theta_std"] == [1.0, 2.0]
    single = json.loads(encode_predict_response({"embedding": np.ones((2, 3), np.float32)}, ROW))
    assert single == {"predictions": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]}
    single_col = json.loads(encode_predict_response({"embedding": np.ones((2,), np.float32)}, COLUMNAR))
    assert single_col == {"outputs": [1.0, 1.0]}


def test_float32_written_with_shortest_decimal_and_nan_as_token():
    text = encode_predict_response({"y": np.array([0.1, np.inf, np.nan], np.float32)}, COLUMNAR)
    assert text == b'{"outputs": [0.1, Infinity, NaN]}'
    assert to_json_value(np.array([b"\x00"], dtype=object), "raw_bytes") == [{"b64": "AA=="}]


def test_response_rows_must_share_batch_size():
    with pytest.raises(ServingError, match="inconsistent batch size"):
        encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, ROW)


def test_client_side_decoding():
    arr = json_to_output([[1.5, 2.0]])
    assert arr.dtype == np.float32 and arr.shape == (1, 2)
    raw = json_to_output([{"b64": "AAE="}, {"b64": "Ag=="}])
    assert raw.tolist() == [b"\x00\x01", b"\x02"]


@pytest.mark.parametrize("text", [
    b'{"instances": [[[[1.5], [-2]], [[NaN], [1e-3]]]]}',
    b'{"signature_name": "serving_default", "inputs": [[[[0.25],[1]],[[2],[3]]], [[[4],[5]],[[6],[7]]]]}',
    b' { "inputs" : [ [ [ [ 1 ] , [ 2 ] ] , [ [ 3 ] , [ Infinity ] ] ] ] , "signature_name" : "x" } ',
])
def test_fast_path_reads_plain_numeric_bodies_exactly_like_json(text):
    fast = parse_predict_body(text)
    assert fast.numeric is not None  # took the fast path
    doc = json.loads(text)
    assert fast.signature_name == doc.get("signature_name", "")
    got, fmt = request_inputs(fast, IMAGE)
    key = "instances" if "instances" in doc else "inputs"
    want = np.asarray(doc[key], dtype=np.float32)
    assert fmt == (ROW if key == "instances" else COLUMNAR)
    np.testing.assert_array_equal(got["image"], want)
    assert got["image"].dtype == np.float32


@pytest.mark.parametrize("text, fragment", [
    (b'{"instances": [[1, 2], [3]]}', "Failed to process element: 1"),  # ragged
    (b'{"instances": [[1, 2], [3, [4]]]}', "Failed to process element: 1"),
    (b'{"instances": [[1,, 2]]}', "JSON Parse error"),
    (b'{"instances": [1.2.3]}', "JSON Parse error"),
    (b'{"instances": []}', "No values in 'instances' array"),
])
def test_fast_path_leaves_odd_bodies_to_json_for_its_messages(text, fragment):
    spec = {"x": TensorInfo("DT_FLOAT", None)}
    with pytest.raises(ServingError) as info:
        request_inputs(parse_predict_body(text), spec)
    assert fragment in info.value.message


@pytest.mark.parametrize("text", [
    b'{"instances": [[1, 2], [3, 4x]]}', b'{"instances": [[1, 2], [3, -]]}',
    b'{"instances": [[1, 2], [, 4]]}', b'{"instances": [[], []]}', b'{"inputs": [[1], [2 3]]}',
    b'{"inputs": [[1], [2 .5]]}', b'{"inputs": [[1], [2e]]}',
])
def test_fast_path_never_invents_numbers(text):
    # Whatever numpy's reader does with these, they are left to the JSON path.
    try:
        request = parse_predict_body(text)
    except ServingError:
        return
    assert request.numeric is None


@pytest.mark.parametrize("shape", [(2, 3, 3, 1), (1, 1, 1, 1), (3, 1), (2, 2, 1, 1), (4,), (2, 3)])
@pytest.mark.parametrize("signature, columnar", [(None, False), ("embed", True)])
def test_client_bodies_read_back_to_the_exact_array(shape, signature, columnar):
    # rest_client writes [N, H, W, 1] arrays as [N, H, W] and wraps each number (orjson);
    # whatever path it takes, the JSON must hold exactly the float32 values and shape.
    from deeplense_tf.serving.rest_client import RestClient

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    body = RestClient().encode_predict(x, signature=signature, columnar=columnar)
    doc = json.loads(body)
    got = np.asarray(doc["inputs" if columnar else "instances"], np.float32)
    assert got.shape == x.shape and np.array_equal(got, x)
    assert doc.get("signature_name") == signature
    # ... and the server's fast path reads it to the same array.
    spec = {"image": TensorInfo("DT_FLOAT", None)}
    parsed = parse_predict_body(body)
    assert parsed.numeric is not None
    np.testing.assert_array_equal(request_inputs(parsed, spec)[0]["image"], x)


@pytest.mark.parametrize("text", [
    b'{"instances": [[1,2],[3,4,5],[6]]}',  # ragged, yet as many numbers as a regular [3, 2]
    b'{"instances": [[1,2],[3,[4]]]}', b'{"instances": [[1,2],[]]}',
])
def test_fast_path_checks_the_structure_not_just_the_count(text):
    request = parse_predict_body(text)
    assert request.numeric is None
    with pytest.raises(ServingError, match="Failed to process element"):
        request_inputs(request, {"x": TensorInfo("DT_FLOAT", None)})
    regular = parse_predict_body(b'{"instances": [[1 ,2],[3,4] ]}')
    assert regular.numeric is not None and regular.numeric[1].tolist() == [[1, 2], [3, 4]]
