"""The compiled JSON number reader (deeplense_tf/serving/json_numbers.py): exact, strict, regular."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeplense_tf.serving import json_numbers
from deeplense_tf.serving.json_tensors import parse_predict_body

pytestmark = pytest.mark.skipif(not json_numbers.available(), reason="numba is not installed")


def _read(text: bytes):
    return json_numbers.read_numeric_list(text, text.index(b"["))


def test_reads_every_number_as_python_float_does():
    rng = np.random.default_rng(0)
    # float32 bit patterns over the whole range (denormals, 1e38) written three ways:
    # shortest (orjson-like repr), 17 digits, and with exponents far beyond 10^22.
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = bits[np.isfinite(bits)].astype(np.float64)
    tokens = [repr(v) for v in values.tolist()] + [f"{v:.17g}" for v in values[:2000].tolist()] + [
        "0", "-0", "-0.0", "1e400", "-1e400", "1e-400", "123456789012345678901234567890",
        "0.000000000000000000000000000001234", "9007199254740993", "1.7976931348623157e308",
        "4.9e-324", "2.2250738585072014E-308", "1E+2", "1e-0"]
    text = ("[" + ", ".join(tokens) + "]").encode()
    end, got = _read(text)
    assert end == len(text)
    want = np.array([float(t) for t in tokens])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))  # bit for bit, -0.0 too


def test_float32_inputs_round_trip_exactly_from_shortest_text():
    x = np.random.default_rng(1).gamma(0.5, 1.0, size=(4, 8, 8, 1)).astype(np.float32)
    text = json.dumps(x.tolist()).encode()
    end, got = _read(text)
    assert got.shape == x.shape and np.array_equal(got.astype(np.float32), x)
    # what TF Serving does (a double, then cast) is what the JSON module gives
    assert np.array_equal(got, np.array(json.loads(text)))


@pytest.mark.parametrize("text", [
    b"[[1],[2,3]]", b"[[1,2],[3]]", b"[1,[2]]", b"[[1],2]", b"[]", b"[[]]", b"[1,]", b"[,1]",
    b"[01]", b"[1.]", b"[.5]", b"[-]", b"[1e]", b"[1e+]", b"[+1]", b"[NaN]", b"[Infinity]",
    b"[true]", b'["1"]', b"[1 2]", b"[1,2", b"[0x10]", b"[1__0]", b"[[[[1]]]" ,
    b"[" * 40 + b"1" + b"]" * 40,
])
def test_refuses_what_is_not_a_regular_list_of_json_numbers(text):
    assert _read(text) is None


def test_whitespace_and_shape():
    end, got = _read(b' [ [ 1 , 2.5 ] ,\n\t[ -3e0 , 4 ] ]  }')
    assert got.tolist() == [[1.0, 2.5], [-3.0, 4.0]] and end == 32


def test_bodies_it_refuses_still_parse_on_the_json_paths():
    # NaN is read by the older paths (TF Serving accepts NaN / Infinity in requests).
    request = parse_predict_body(b'{"instances": [[NaN, 1.5], [Infinity, -2]]}')
    key, arr = request.numeric
    assert key == "instances" and np.isnan(arr[0, 0]) and arr[1, 0] == np.inf and arr[1, 1] == -2.0
    # a ragged list is left to the JSON path (which explains it); the reader did not take it
    assert parse_predict_body(b'{"instances": [[1], [2, 3]]}').numeric is None


def test_signature_name_before_or_after_and_trailing_text():
    request = parse_predict_body(b'{"instances": [[1, 2]], "signature_name": "sig"}')
    assert request.signature_name == "sig" and request.numeric[1].tolist() == [[1.0, 2.0]]
    request = parse_predict_body(b'{"signature_name": "s2", "inputs": [3]}')
    assert request.signature_name == "s2" and request.numeric == ("inputs", request.numeric[1])
    # something after the list other than the signature name: not the fast path
    assert parse_predict_body(b'{"instances": [1], "x": 2}').numeric is None


@pytest.mark.parametrize("text", [
    b"[[[1],[2]],[[3],[4]],[[5],[6]],[[7],[8]]]", b"[[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]",
    b"[1, 2, 3, 4, 5, 6, 7, 8]", b"[[1],[2],[3],[4,5],[6]]", b"[[1],[2],[3],[4],[5,6]]",
    b"[[[1],[2]],[[3],[4]],[[5]],[[7],[8]]]", b"[[1,2],[3,4]],[5,6]]", b"[[1,2],[3,4],[5,6]] ",
    b"[[1,2] ,[3,4],[5,6],[7,8]]", b"[[1,2],[3,4],[5,6],[7,8]",
])
def test_reading_in_two_halves_gives_what_one_pass_gives(text, monkeypatch):
    whole = json_numbers._read(text, 0)
    monkeypatch.setattr(json_numbers, "PARALLEL_BYTES", 8)
    halves = json_numbers.read_numeric_list(text, 0)
    if whole is None:
        assert halves is None
    else:
        assert halves[0] == whole[0] and np.array_equal(halves[1], whole[1])
        assert halves[1].shape == whole[1].shape


def test_a_large_body_is_read_in_halves_exactly():
    x = np.random.default_rng(2).gamma(0.5, 1.0, size=(64, 64, 64, 1)).astype(np.float32)
    text = json.dumps(x.tolist()).encode()
    assert len(text) > json_numbers.PARALLEL_BYTES
    assert json_numbers._read_in_halves(text, 0) is not None
    end, got = json_numbers.read_numeric_list(text, 0)
    assert end == len(text) and np.array_equal(got.astype(np.float32), x)


def test_the_writer_gives_text_that_reads_back_to_the_same_float32():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, 1.0, 0.5, 0.1, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38,
                        -3.4028235e38, 123456789.0, 1e16, 9.999999e15, 1e-5, 9.99999e-6],
                       dtype=np.float32)
    values = np.concatenate([special, bits[np.isfinite(bits)]])
    text = json_numbers.write_float32_list(values)
    tokens = text[1:-1].split(b",")
    back = np.array([float(t) for t in tokens]).astype(np.float32)  # a double, then cast
    assert np.array_equal(back.view(np.uint32), values.view(np.uint32))  # -0.0 included
    # short where short reads back: 0.1 as "0.1", not "0.100000001" (beyond 10^+-22 the
    # writer keeps nine digits: its check would not be exact there)
    assert tokens[:6] == [b"0.0", b"-0.0", b"1.0", b"0.5", b"0.1", b"1.40129846e-45"]


@pytest.mark.parametrize("shape", [(1,), (3,), (2, 3), (4, 2, 1), (1, 1, 1), (5, 3, 2, 1)])
def test_the_writer_nests_lists_as_the_json_module_does(shape):
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    text = json_numbers.write_float32_list(x)
    assert np.array_equal(np.array(json.loads(text), dtype=np.float32), x)
    assert np.array(json.loads(text)).shape == shape  # the nesting, not just the numbers


def test_the_writer_splits_large_arrays_between_two_threads_without_changing_the_text(monkeypatch):
    x = np.random.default_rng(5).gamma(0.5, 1.0, size=(7, 4, 3, 1)).astype(np.float32)
    whole = json_numbers._write_array(x)
    monkeypatch.setattr(json_numbers, "PARALLEL_NUMBERS", 8)
    assert json_numbers.write_float32_list(x) == whole


@pytest.mark.parametrize("arr", [np.array([np.nan], np.float32), np.array([np.inf], np.float32),
                                 np.zeros((0, 3), np.float32), np.array(1.5, np.float32),
                                 np.array([1.5])])
def test_the_writer_leaves_other_arrays_to_orjson_or_json(arr):
    assert json_numbers.write_float32_list(arr) is None
