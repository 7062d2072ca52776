"""Hostile `.npy` files: every one is a clear DataError naming the file, and none crashes.

The corpus is written by hand, opcode by opcode, from a template that spells out exactly
what numpy writes for `np.array([image, m], dtype=object)` (checked against numpy itself
below); each hostile case changes one piece of it, or of the `.npy` header. The corpus
runs once in a subprocess, so that memory corruption (the segfault of issue 14) fails
that test instead of killing pytest, and once in-process case by case for readable
failures.
"""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from deeplense_tf.data import load_examples
from deeplense_tf.data.safe_npy import MAX_IMAGE_PIXELS, load_npy, parse_array_pickle
from deeplense_tf.errors import DataError

MA = "numpy._core.multiarray"


# --- a tiny pickle assembler ----------------------------------------------------------------


def op_global(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_str(text):
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def op_bytes(raw):
    return pickle.BINBYTES + struct.pack("<I", len(raw)) + raw


def op_int(value):
    return pickle.BININT + struct.pack("<i", value)


def op_tuple(*items):
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def op_dtype(code="f8", state=None, args=None):
    """`numpy.dtype(code, False, True)` with BUILD state (3, '<', None, None, None, -1, -1, 0)."""
    order = "|" if code.startswith("O") or code[-1] == "1" else "<"
    flags = 63 if code.startswith("O") else 0
    if state is None:
        state = op_tuple(
            op_int(3),
            op_str(order),
            pickle.NONE,
            pickle.NONE,
            pickle.NONE,
            op_int(-1),
            op_int(-1),
            op_int(flags),
        )
    args = args if args is not None else op_tuple(op_str(code), pickle.NEWFALSE, pickle.NEWTRUE)
    return op_global("numpy", "dtype") + args + pickle.REDUCE + state + pickle.BUILD


def op_reconstruct(args=None):
    args = args or op_tuple(op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b"))
    return op_global(MA, "_reconstruct") + args + pickle.REDUCE


def op_array(shape=(2, 3), dtype=None, data=None, fortran=pickle.NEWFALSE, version=1):
    """A numeric ndarray as numpy pickles it: _reconstruct(...) + BUILD (1, shape, dtype, F, data)."""
    dtype = dtype if dtype is not None else op_dtype("f8")
    if data is None:
        data = op_bytes(np.arange(np.prod(shape), dtype="<f8").tobytes())
    state = op_tuple(op_int(version), op_tuple(*map(op_int, shape)), dtype, fortran, data)
    return op_reconstruct() + state + pickle.BUILD


def op_scalar(value=2e-23, dtype=None, raw=None):
    dtype = dtype if dtype is not None else op_dtype("f8")
    raw = raw if raw is not None else struct.pack("<d", value)
    return op_global(MA, "scalar") + op_tuple(dtype, op_bytes(raw)) + pickle.REDUCE


def op_object_array(items=None, shape=(2,), dtype=None, data=None):
    """The published layout: an object array [image, m]."""
    items = items if items is not None else [op_array(), op_scalar()]
    dtype = dtype if dtype is not None else op_dtype("O8")
    if data is None:
        data = pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS
    state = op_tuple(op_int(1), op_tuple(*map(op_int, shape)), dtype, pickle.NEWFALSE, data)
    return op_reconstruct() + state + pickle.BUILD


def stream(body, protocol=3):
    return pickle.PROTO + bytes([protocol]) + body + pickle.STOP


def npy_header(descr="|O", shape=(2,), fortran=False, version=1, text=None, length=None):
    text = (
        text
        if text is not None
        else repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    )
    raw = text.encode("latin-1")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    size = len(raw) if length is None else length
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + raw
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", size) + raw


def npy(body, shape=(2,), protocol=3):
    return npy_header(shape=shape) + stream(body, protocol)


# --- the corpus -------------------------------------------------------------------------------

_ARRAY_OVER_POINTERS = op_array(
    shape=(2,),
    # A float64 dtype whose BUILD state sets the object flags and an item size: with the
    # restricted unpickler numpy raised SystemError here (the crashing variant is below).
    dtype=op_dtype(
        state=op_tuple(
            op_int(3),
            op_str("|"),
            pickle.NONE,
            pickle.NONE,
            pickle.NONE,
            op_int(8),
            op_int(8),
            op_int(63),
        )
    ),
    data=op_bytes(struct.pack("<QQ", 0x4141414141414141, 0xDEADBEEF)),
)


def _object_dtype_without_list_pickle(flags):
    """The object dtype with its BUILD flags lacking NPY_LIST_PICKLE (2): numpy then takes
    raw bytes as the array's data, i.e. as PyObject pointers. With the restricted unpickler
    this 293-byte file segfaulted on the first item access (checked: exit -11)."""
    return op_array(
        shape=(2,),
        dtype=op_dtype(
            "O8",
            state=op_tuple(
                op_int(3),
                op_str("|"),
                pickle.NONE,
                pickle.NONE,
                pickle.NONE,
                op_int(-1),
                op_int(-1),
                op_int(flags),
            ),
        ),
        data=op_bytes(struct.pack("<QQ", 0x4141414141414141, 0xDEADBEEF)),
    )


HOSTILE = {
    # dtype state tricks
    "object-array-over-raw-bytes": (npy(_object_dtype_without_list_pickle(61)), "state"),
    "object-array-over-raw-bytes-flags-0": (npy(_object_dtype_without_list_pickle(0)), "state"),
    "object-array-over-raw-bytes-inside": (
        npy(op_object_array([_object_dtype_without_list_pickle(61), op_scalar()])),
        "state",
    ),
    "dtype-object-flags": (npy(op_object_array([_ARRAY_OVER_POINTERS, op_scalar()])), "state"),
    "dtype-object-flags-top": (npy(_ARRAY_OVER_POINTERS), "state"),
    "dtype-flags-only": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_dtype(
                            state=op_tuple(
                                op_int(3),
                                op_str("<"),
                                pickle.NONE,
                                pickle.NONE,
                                pickle.NONE,
                                op_int(-1),
                                op_int(-1),
                                op_int(1),
                            )
                        )
                    ),
                    op_scalar(),
                ]
            )
        ),
        "state",
    ),
    "dtype-state-version-4": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_dtype(
                            state=op_tuple(
                                op_int(4),
                                op_str("<"),
                                pickle.NONE,
                                pickle.NONE,
                                pickle.NONE,
                                op_int(-1),
                                op_int(-1),
                                op_int(0),
                                pickle.NONE,
                            )
                        )
                    ),
                    op_scalar(),
                ]
            )
        ),
        "state",
    ),
    "dtype-state-fields": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_dtype(
                            state=op_tuple(
                                op_int(3),
                                op_str("<"),
                                pickle.NONE,
                                op_tuple(op_str("a")),
                                pickle.NONE,
                                op_int(-1),
                                op_int(-1),
                                op_int(0),
                            )
                        )
                    ),
                    op_scalar(),
                ]
            )
        ),
        "state",
    ),
    "dtype-no-state": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_global("numpy", "dtype")
                        + op_tuple(op_str("f8"), pickle.NEWFALSE, pickle.NEWTRUE)
                        + pickle.REDUCE
                    ),
                    op_scalar(),
                ]
            )
        ),
        "state",
    ),
    "dtype-built-twice": (
        npy(
            op_object_array(
                [op_array(dtype=op_dtype() + op_tuple(op_int(3)) + pickle.BUILD), op_scalar()]
            )
        ),
        "BUILD on something",
    ),
    "dtype-object-inside": (
        npy(op_object_array([op_array(dtype=op_dtype("O8")), op_scalar()])),
        "object array inside an object array|items are bytes",
    ),
    "dtype-unicode": (
        npy(op_object_array([op_array(dtype=op_dtype("U4")), op_scalar()])),
        "unsupported dtype 'U4'",
    ),
    "dtype-complex": (
        npy(op_object_array([op_array(dtype=op_dtype("c16")), op_scalar()])),
        "unsupported dtype 'c16'",
    ),
    "dtype-void": (
        npy(op_object_array([op_array(dtype=op_dtype("V8")), op_scalar()])),
        "unsupported dtype 'V8'",
    ),
    "dtype-odd-args": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_dtype(args=op_tuple(op_str("f8"), pickle.NEWTRUE, pickle.NEWTRUE))
                    ),
                    op_scalar(),
                ]
            )
        ),
        "unexpected arguments",
    ),
    "dtype-of-a-dtype": (
        npy(
            op_object_array(
                [
                    op_array(
                        dtype=op_dtype(
                            args=op_tuple(op_dtype("O8"), pickle.NEWFALSE, pickle.NEWTRUE)
                        )
                    ),
                    op_scalar(),
                ]
            )
        ),
        "unexpected arguments",
    ),
    # _reconstruct with odd arguments
    "reconstruct-dtype-class": (
        npy(
            op_reconstruct(
                op_tuple(op_global("numpy", "dtype"), op_tuple(op_int(0)), op_bytes(b"b"))
            )
            + op_tuple(
                op_int(1), op_tuple(op_int(2)), op_dtype("O8"), pickle.NEWFALSE, pickle.EMPTY_LIST
            )
            + pickle.BUILD
        ),
        "unexpected arguments",
    ),
    "reconstruct-shape-arg": (
        npy(
            op_reconstruct(
                op_tuple(op_global("numpy", "ndarray"), op_tuple(op_int(99999999)), op_bytes(b"b"))
            )
        ),
        "unexpected arguments",
    ),
    "reconstruct-four-args": (
        npy(
            op_reconstruct(
                op_tuple(
                    op_global("numpy", "ndarray"), op_tuple(op_int(0)), op_bytes(b"b"), pickle.NONE
                )
            )
        ),
        "unexpected arguments",
    ),
    "reconstruct-no-build": (npy(op_reconstruct()), "unexpected state"),
    "array-state-version-2": (
        npy(op_object_array([op_array(version=2), op_scalar()])),
        "unexpected state",
    ),
    "array-data-too-short": (
        npy(op_object_array([op_array(shape=(64, 64), data=op_bytes(b"\0" * 16)), op_scalar()])),
        "needs 32768 bytes, the file has 16",
    ),
    "array-data-is-list": (
        npy(op_object_array([op_array(data=pickle.EMPTY_LIST), op_scalar()])),
        "must be bytes",
    ),
    "array-fortran-not-bool": (
        npy(op_object_array([op_array(fortran=op_int(1)), op_scalar()])),
        "unexpected state",
    ),
    # nested reduce
    "reduce-of-reduce": (npy(op_reconstruct() + op_tuple() + pickle.REDUCE), "REDUCE of"),
    "reconstruct-of-reconstruct": (
        npy(op_reconstruct(op_tuple(op_reconstruct(), op_tuple(op_int(0)), op_bytes(b"b")))),
        "unexpected arguments",
    ),
    "scalar-of-array": (
        npy(
            op_object_array(
                [
                    op_array(),
                    op_global(MA, "scalar") + op_tuple(op_dtype(), op_array()) + pickle.REDUCE,
                ]
            )
        ),
        "must be bytes",
    ),
    "scalar-wrong-size": (
        npy(op_object_array([op_array(), op_scalar(raw=b"\0" * 3)])),
        "unexpected arguments",
    ),
    "encode-utf16": (
        npy(
            op_object_array(
                [
                    op_array(
                        data=op_global("_codecs", "encode")
                        + op_tuple(op_str("\0" * 48), op_str("utf-16"))
                        + pickle.REDUCE
                    ),
                    op_scalar(),
                ]
            )
        ),
        "latin-1",
    ),
    # huge shapes (bounded before any allocation)
    "huge-shape-pickle": (
        npy(op_object_array([op_array(shape=(8000, 8000), data=op_bytes(b"")), op_scalar()])),
        "than the 16777216 allowed",
    ),
    "huge-dimension-pickle": (
        npy(op_object_array([op_array(shape=(2**31 - 1, 0), data=op_bytes(b"")), op_scalar()])),
        "array size must be an integer >= 0|than the 16777216 allowed",
    ),
    "negative-shape-pickle": (
        npy(op_object_array([op_array(shape=(-1, 4), data=op_bytes(b"")), op_scalar()])),
        "array size must be an integer >= 0|than the 16777216 allowed",
    ),
    "five-dimensions": (
        npy(
            op_object_array(
                [op_array(shape=(1, 1, 1, 1, 1), data=op_bytes(b"\0" * 8)), op_scalar()]
            )
        ),
        "at most 4 sizes",
    ),
    "huge-shape-npy": (npy_header("<f8", (8000, 8000)), "than the 16777216 allowed"),
    "huge-object-array": (npy(op_object_array(shape=(3,)), shape=(3,)), "than the 2 allowed"),
    "negative-shape-npy": (npy_header("<f8", (-1, 4)), "shape must be a tuple"),
    "shape-mismatch": (npy(op_object_array(), shape=(1, 2)), "header says shape"),
    # opcodes numpy never writes
    "persistent-id": (npy(op_str("x") + pickle.BINPERSID), "opcode BINPERSID"),
    "persistent-id-text": (npy(pickle.PERSID + b"x\n"), "opcode PERSID"),
    "ext1": (npy(pickle.EXT1 + b"\x01"), "opcode EXT1"),
    "ext2": (npy(pickle.EXT2 + b"\x01\x00"), "opcode EXT2"),
    "ext4": (npy(pickle.EXT4 + b"\x01\x00\x00\x00"), "opcode EXT4"),
    "newobj": (npy(op_global("numpy", "ndarray") + op_tuple() + pickle.NEWOBJ), "opcode NEWOBJ"),
    "inst": (npy(pickle.MARK + pickle.INST + b"os\nsystem\n"), "opcode INST|refusing to load"),
    "obj": (npy(pickle.MARK + op_global("numpy", "dtype") + pickle.OBJ), "opcode OBJ"),
    "dict": (npy(pickle.EMPTY_DICT), "opcode EMPTY_DICT"),
    "next-buffer": (npy(pickle.NEXT_BUFFER, protocol=5), "opcode NEXT_BUFFER"),
    "dup": (npy(op_int(1) + pickle.DUP), "opcode DUP"),
    "protocol-0": (
        npy_header() + pickle.dumps(np.array([np.ones(2), 1.0], object), 0),
        "protocol 0 or 1",
    ),
    "protocol-99": (npy_header() + pickle.PROTO + b"\x63" + pickle.STOP, "protocol 99"),
    "unknown-opcode-byte": (npy_header() + b"\x80\x03\xff.", "malformed pickle"),
    # globals that are not numpy's array helpers
    "os-system": (
        npy(op_global("os", "system") + op_tuple(op_str("true")) + pickle.REDUCE),
        "refusing to load os.system",
    ),
    "builtins-eval": (npy(op_global("builtins", "eval")), "refusing to load builtins.eval"),
    "numpy-load": (npy(op_global("numpy", "load")), "refusing to load numpy.load"),
    "stack-global-getattr": (
        npy(op_str("builtins") + op_str("getattr") + pickle.STACK_GLOBAL, protocol=4),
        "refusing to load builtins.getattr",
    ),
    # memo tricks and recursion
    "list-contains-itself": (
        npy(
            op_reconstruct()
            + pickle.MARK
            + op_int(1)
            + op_tuple(op_int(2))
            + op_dtype("O8")
            + pickle.NEWFALSE
            + pickle.EMPTY_LIST
            + pickle.BINPUT
            + b"\x07"
            + pickle.MARK
            + pickle.BINGET
            + b"\x07"
            + pickle.BINGET
            + b"\x07"
            + pickle.APPENDS
            + pickle.TUPLE
            + pickle.BUILD
        ),
        "item is a list",
    ),
    "state-is-itself": (
        npy(op_reconstruct() + pickle.BINPUT + b"\x00" + pickle.BINGET + b"\x00" + pickle.BUILD),
        "unexpected state",
    ),
    "memo-read-before-write": (npy(pickle.BINGET + b"\x05"), "memo entry 5 is read before"),
    "memo-index-huge": (
        npy(op_int(1) + pickle.LONG_BINPUT + b"\xff\xff\xff\x7f"),
        "memo index out of range",
    ),
    "deep-marks": (npy(pickle.MARK * 1000), "nests too deeply"),
    "wide-stack": (npy(pickle.EMPTY_LIST * 1000), "nests too deeply"),
    "many-opcodes": (
        npy((pickle.FRAME + bytes(8)) * 5000 + op_int(1), protocol=4),
        "more than 4096 pickle opcodes",
    ),
    # object arrays holding other things than numbers
    "object-array-of-strings": (npy(op_object_array([op_str("text"), op_scalar()])), "item is str"),
    "object-array-of-bool": (npy(op_object_array([op_array(), pickle.NEWTRUE])), "item is bool"),
    "object-array-of-none": (npy(op_object_array([op_array(), pickle.NONE])), "item is NoneType"),
    "object-array-of-tuples": (npy(op_object_array([op_array(), op_tuple()])), "item is tuple"),
    # truncated and malformed streams
    "truncated-bytes": (npy_header() + stream(op_object_array())[:-40], "truncated or malformed"),
    "no-stop": (npy_header() + stream(op_object_array())[:-1], "truncated or malformed"),
    "trailing-data": (npy(op_object_array()) + b"extra", "5 bytes after the end"),
    "two-values": (npy(op_int(1) + op_int(2)), "exactly one value"),
    "empty-pickle": (npy_header(), "truncated or malformed"),
    "bytes-length-huge": (npy_header() + b"\x80\x03B\xff\xff\xff\x7f", "truncated or malformed"),
    # the .npy container
    "wrong-magic": (b"\x93NUMPZ\x01\x00" + npy_header()[8:], "no numpy magic"),
    "not-npy": (b"PK\x03\x04 this is a zip", "no numpy magic"),
    "empty-file": (b"", "no numpy magic"),
    "version-4": (npy_header(version=4), "unknown format version 4.0"),
    "giant-header": (npy_header(version=2, length=2**31), "header of 2147483648 bytes"),
    "header-truncated": (npy_header()[:20], "truncated .npy header"),
    "header-call": (npy_header(text="__import__('os').system('true')"), "not a Python dict"),
    "header-nested": (npy_header(text="(" * 1000 + ")" * 1000), "not a Python dict"),
    "header-list": (npy_header(text="[1, 2]"), "exactly descr"),
    "header-extra-key": (
        npy_header(text="{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
        "exactly descr",
    ),
    "header-fortran-str": (npy_header("<f8", (1,), fortran="yes"), "fortran_order"),
    "header-shape-float": (
        npy_header(text="{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,)}"),
        "shape must be a tuple",
    ),
    "unknown-dtype": (npy_header("<U4", (2,)), "unsupported dtype '<U4'"),
    "structured-dtype": (npy_header([("a", "<f4")], (2,)), "unsupported dtype"),
    "datetime-dtype": (npy_header("<M8[s]", (2,)), "unsupported dtype"),
    "longdouble-dtype": (npy_header("<f16", (2,)), "unsupported dtype"),
    "numeric-truncated": (npy_header("<f8", (4, 4)) + b"\0" * 100, "needs 128 bytes"),
    "numeric-padded": (npy_header("<f8", (1,)) + b"\0" * 16, "needs 8 bytes"),
}


def _write_corpus(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (content, _) in HOSTILE.items():
        (folder / f"{name}.npy").write_bytes(content)
    return {name: message for name, (_, message) in HOSTILE.items()}


# --- the template is what numpy writes --------------------------------------------------------


def test_template_is_numpys_own_pickle():
    """The assembler writes what numpy writes: numpy unpickles it to the same values, and
    the strict parser reads it, so each hostile case differs from a real file in one piece."""
    payload = stream(op_object_array())
    expected = np.empty(2, object)
    expected[0], expected[1] = np.arange(6, dtype="<f8").reshape(2, 3), np.float64(2e-23)
    unpickled = pickle.loads(payload)  # trusted here: we just wrote it
    np.testing.assert_array_equal(unpickled[0], expected[0])
    assert unpickled[1] == expected[1]
    parsed = parse_array_pickle(payload)
    np.testing.assert_array_equal(parsed[0], expected[0])
    assert parsed[1] == expected[1] and parsed.shape == (2,)


# --- the corpus -------------------------------------------------------------------------------


def test_hostile_corpus_in_a_subprocess_never_crashes(tmp_path):
    """A segfault or abort here shows as a non-zero return code, not a dead pytest."""
    messages = _write_corpus(tmp_path / "corpus")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from deeplense_tf.data.safe_npy import load_npy\n"
        "from deeplense_tf.errors import DataError\n"
        "out = {}\n"
        "for path in sorted(Path(sys.argv[1]).glob('*.npy')):\n"
        "    try:\n"
        "        load_npy(path)\n"
        "        out[path.stem] = None\n"
        "    except DataError as error:\n"
        "        out[path.stem] = str(error)\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "corpus")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"crashed with {done.returncode}: {done.stderr[-2000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == set(messages)
    accepted = [name for name, error in results.items() if error is None]
    assert not accepted, f"hostile files read without error: {accepted}"
    for name, error in results.items():
        assert f"{name}.npy" in error, error
        assert "\n" not in error


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_a_clear_data_error(tmp_path, name):
    import re

    content, message = HOSTILE[name]
    path = tmp_path / f"{name}.npy"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_npy(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text


def test_hostile_file_in_a_folder_fails_load_examples(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 4), np.float32))
    (tmp_path / "b.npy").write_bytes(HOSTILE["dtype-object-flags"][0])
    with pytest.raises(DataError, match=r"b\.npy: .*state"):
        load_examples(tmp_path)


def test_size_bound_is_checked_before_allocating(tmp_path):
    """A 276-byte file that declares 8000x8000 float64 (0.5 GB) allocates nothing big."""
    path = tmp_path / "bomb.npy"
    path.write_bytes(HOSTILE["huge-shape-npy"][0])
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="than the 16777216 allowed"):
            load_npy(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert MAX_IMAGE_PIXELS == 4096 * 4096


def test_size_bound_is_a_parameter(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((64, 64), np.float32))
    assert load_npy(tmp_path / "img.npy", max_pixels=64 * 64).shape == (64, 64)
    with pytest.raises(DataError, match="4096 values, more than the 4095 allowed"):
        load_npy(tmp_path / "img.npy", max_pixels=64 * 64 - 1)
    entry = np.empty(2, object)
    entry[0], entry[1] = np.ones((64, 64)), 1e-23
    np.save(tmp_path / "pair.npy", entry)
    with pytest.raises(DataError, match="than the 4095 allowed"):
        load_npy(tmp_path / "pair.npy", max_pixels=64 * 64 - 1)


def test_object_arrays_can_be_refused(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((4, 4), np.float32))
    assert load_npy(tmp_path / "img.npy", allow_object=False).shape == (4, 4)
    (tmp_path / "pair.npy").write_bytes(npy(op_object_array()))
    assert load_npy(tmp_path / "pair.npy").shape == (2,)
    with pytest.raises(DataError, match=r"pair\.npy: holds a pickled object array"):
        load_npy(tmp_path / "pair.npy", allow_object=False)


def test_every_prefix_of_a_real_file_is_a_data_error(tmp_path):
    """Truncated at any byte, a genuine file is refused with a DataError (never read short)."""
    entry = np.empty(2, object)
    entry[0], entry[1] = np.arange(12, dtype=np.float32).reshape(3, 4), np.float64(1e-23)
    path = tmp_path / "real.npy"
    np.save(path, entry)
    content = path.read_bytes()
    assert load_npy(path)[1] == 1e-23
    cut = tmp_path / "cut.npy"
    for size in range(len(content)):
        cut.write_bytes(content[:size])
        with pytest.raises(DataError, match="cut.npy"):
            load_npy(cut)


# --- .npz members ------------------------------------------------------------------------------


def _npz(path, members: dict) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, content in members.items():
            archive.writestr(f"{key}.npy", content)
    return path


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


_IMAGES = _npy_bytes(np.ones((3, 4, 4), np.float32))

HOSTILE_NPZ = {
    "images-claim-a-billion-rows": (
        {"images": npy_header("<f4", (10**9, 4, 4)) + bytes(64)},
        r"'images': shape \(1000000000, 4, 4\) of float32 needs 64000000000 bytes",
    ),
    "image-rows-too-large": (
        {"images": npy_header("<f8", (1, 8000, 8000))},
        "more than the 16777216 allowed",
    ),
    "object-member": ({"images": _IMAGES, "names": npy(op_object_array())}, "without pickle"),
    "code-in-member": (
        {"images": _IMAGES, "x": npy(op_global("os", "system") + pickle.NONE + pickle.REDUCE)},
        "without pickle",
    ),
    "member-bad-header": ({"images": npy_header(text="__import__('os')")}, "not a Python dict"),
    "member-unknown-dtype": ({"images": npy_header("<c16", (1, 2, 2))}, "unsupported dtype"),
    "member-truncated": ({"images": _IMAGES[:-10]}, "needs 192 bytes of data, the archive holds"),
    "metadata-not-text": (
        {"images": _IMAGES, "metadata": _npy_bytes(np.ones(2))},
        "'metadata' must be text",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NPZ))
def test_hostile_npz_member_is_a_clear_data_error(tmp_path, name):
    import re

    members, message = HOSTILE_NPZ[name]
    path = _npz(tmp_path / f"{name}.npz", members)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_examples(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text
    assert peak < 16 << 20  # nothing the header declares is allocated


def test_npz_that_is_not_a_zip_or_is_cut_short(tmp_path):
    good = _npz(tmp_path / "good.npz", {"images": _IMAGES})
    assert len(load_examples(good)) == 3
    content = good.read_bytes()
    for size in (0, 10, len(content) // 2, len(content) - 1):
        cut = tmp_path / f"cut{size}.npz"
        cut.write_bytes(content[:size])
        with pytest.raises(DataError, match=rf"cut{size}\.npz"):
            load_examples(cut)
    flipped = bytearray(content)
    flipped[60] ^= 0xFF  # inside the deflated member: zlib or CRC error
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"flipped\.npz"):
        load_examples(tmp_path / "flipped.npz")
