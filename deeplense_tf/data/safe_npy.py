"""Read `.npy` files, pickled object arrays included, without unpickling anything.

The published DeepLense files are object arrays `[image, m]`, which numpy stores as a
pickle. Unpickling is unsafe even with a restricted set of globals: numpy's own
`dtype.__setstate__` and `_reconstruct` can be driven by a crafted stream into an object
array over raw bytes, which segfaults when read. So nothing here unpickles. The pickle
opcodes are walked with `pickletools.genops` into inert Python values (the "globals" stay
names and the "calls" stay records that are never called); then the one structure numpy
writes for an object array of numeric arrays and numbers is matched against them and the
arrays are built from their raw bytes with a dtype from an allow-list and a size bound
checked before anything is allocated. Anything else is a `DataError` naming the file.

Numeric `.npy` files get the same treatment: the header is parsed here (magic, version,
bounded header length, a dict literal read with `ast.literal_eval`), then the data are
read with the checked dtype and shape; `NpzArchive` reads the members of an `.npz` the
same way. See docs/security.md ("Data files").
"""

from __future__ import annotations

import ast
import io
import math
import os
import pickletools
import re
import struct
import zipfile
import zlib

import numpy as np

from deeplense_tf.errors import DataError

MAX_IMAGE_PIXELS = 4096 * 4096  # values per array (an image, or its flat H*W vector)
MAX_HEADER_BYTES = 4096  # numpy writes about 128 bytes for the arrays we read
MAX_OBJECT_ITEMS = 2  # the published object arrays hold [image, m]
MAX_NDIM = 4
_MAX_OPCODES = 4096  # a numpy pickle of [image, m] has about 100
_MAX_MEMO = 1024
_MAX_STACK = 256

_MAGIC = b"\x93NUMPY"
# (kind, itemsize) of the dtypes an image or a label may have. No bool, complex, long
# double, strings, datetimes, structured or object dtypes.
_NUMERIC = {("f", 2), ("f", 4), ("f", 8), ("i", 1), ("i", 2), ("i", 4), ("i", 8)}
_NUMERIC |= {("u", 1), ("u", 2), ("u", 4), ("u", 8)}
_NPY_DESCR = re.compile(r"^([<>|=])([fiu])([1-8])$")
_PICKLE_DESCR = re.compile(r"^([fiu])([1-8])$")
_TEXT_DESCR = re.compile(r"^([<>=]U|\|S)([0-9]{1,7})$")  # fixed-width text, in .npz only
MAX_TEXT_CHARS = 1 << 20

# The global names numpy's pickles of arrays and numbers refer to. They are only compared
# as names; nothing is ever looked up or called.
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x, 2.x
_NUMERIC_MODULE = ("numpy.core.numeric", "numpy._core.numeric")
_RECONSTRUCT = {(m, "_reconstruct") for m in _MULTIARRAY}
_SCALAR = {(m, "scalar") for m in _MULTIARRAY}
_FROMBUFFER = {(m, "_frombuffer") for m in _NUMERIC_MODULE}  # protocol 5
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_ENCODE = ("_codecs", "encode")  # protocol 2 has no bytes: data arrive as latin-1 text
_KNOWN_GLOBALS = _RECONSTRUCT | _SCALAR | _FROMBUFFER | {_NDARRAY, _DTYPE, _ENCODE}

# Opcodes numpy's array pickles use (protocols 2 to 5). Everything else (persistent ids,
# extension registry codes, OBJ / INST / NEWOBJ, dicts, sets, out-of-band buffers, the
# protocol 0/1 text forms, ...) is refused.
_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_BYTES = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_NUMBERS = {"BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_LITERALS = frozenset(_STRINGS | _BYTES | _NUMBERS)  # push their argument


class _Global:
    """A name from the stream (`module.name`); never resolved to an object."""

    def __init__(self, module: str, name: str):
        self.key = (module, name)

    def __repr__(self):
        return ".".join(self.key)


class _Call:
    """What a REDUCE would have called: `func(*args)`, plus the BUILD state; never run."""

    def __init__(self, func: _Global, args: tuple):
        self.func, self.args, self.state, self.has_state = func, args, None, False


class _List:
    """An EMPTY_LIST and what APPEND(S) added to it."""

    def __init__(self):
        self.items = []


class _Refused(Exception):
    """The stream is not one numpy writes for an array of numbers; message says why."""


def _describe(value) -> str:
    if isinstance(value, _Call):
        return f"a call of {value.func!r}"
    if isinstance(value, _List):
        return "a list"
    return type(value).__name__


# --- the opcode walk ----------------------------------------------------------------------


def _walk(payload: bytes):
    """The inert value a pickle stream describes, or _Refused / ValueError."""
    stream = io.BytesIO(payload)
    stack, marks, memo = [], [], {}
    ops = pickletools.genops(stream)
    for count, (opcode, arg, _position) in enumerate(ops):
        if count >= _MAX_OPCODES:
            raise _Refused(f"more than {_MAX_OPCODES} pickle opcodes")
        name = opcode.name
        if count == 0 and name != "PROTO":
            raise _Refused("no PROTO opcode (pickle protocol 0 or 1); numpy writes 2 to 5")
        if name in _LITERALS:
            stack.append(arg)
        elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            index = len(memo) if name == "MEMOIZE" else arg
            if not stack or index >= _MAX_MEMO:
                raise _Refused("memo index out of range")
            memo[index] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Refused(f"memo entry {arg} is read before it is written")
            stack.append(memo[arg])
        elif name == "PROTO":
            if not 2 <= arg <= 5:
                raise _Refused(f"pickle protocol {arg}; numpy writes protocols 2 to 5")
        elif name == "FRAME":
            pass  # framing only groups bytes; the opcodes inside are checked one by one
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise _Refused("the pickle does not end with exactly one value")
            if stream.tell() != len(payload):
                raise _Refused(f"{len(payload) - stream.tell()} bytes after the end of the pickle")
            return stack[0]
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = _pop(stack, marks), _pop(stack, marks)
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise _Refused("STACK_GLOBAL needs two strings")
            stack.append(_global(module, attr))
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack, marks)))
        elif name in ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            size = ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3").index(name)
            items = [_pop(stack, marks) for _ in range(size)][::-1]
            stack.append(tuple(items))
        elif name == "EMPTY_LIST":
            stack.append(_List())
        elif name == "APPEND":
            value = _pop(stack, marks)
            _top_list(stack, marks).items.append(value)
        elif name == "APPENDS":
            values = _pop_mark(stack, marks)
            _top_list(stack, marks).items.extend(values)
        elif name == "REDUCE":
            args, func = _pop(stack, marks), _pop(stack, marks)
            if not isinstance(func, _Global) or not isinstance(args, tuple):
                raise _Refused("REDUCE of something that is not a numpy function")
            stack.append(_Call(func, args))
        elif name == "BUILD":
            state = _pop(stack, marks)
            target = stack[-1] if stack and not (marks and len(stack) <= marks[-1]) else None
            if not isinstance(target, _Call) or target.has_state:
                raise _Refused("BUILD on something that is not a freshly made numpy object")
            target.state, target.has_state = state, True
        else:
            raise _Refused(f"pickle opcode {name}, which numpy's array pickles do not use")
        if len(stack) > _MAX_STACK or len(marks) > _MAX_STACK:
            raise _Refused("the pickle nests too deeply")
    raise _Refused("the pickle has no STOP")


def _global(module: str, name: str) -> _Global:
    if (module, name) not in _KNOWN_GLOBALS:
        raise _Refused(
            f"refusing to load {module}.{name}: only numpy arrays and numbers are allowed"
        )
    return _Global(module, name)


def _pop(stack, marks):
    if not stack or (marks and len(stack) <= marks[-1]):
        raise _Refused("stack underflow")
    return stack.pop()


def _pop_mark(stack, marks):
    if not marks:
        raise _Refused("no MARK to close")
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items


def _top_list(stack, marks) -> _List:
    if not stack or (marks and len(stack) <= marks[-1]) or not isinstance(stack[-1], _List):
        raise _Refused("APPEND to something that is not a list")
    return stack[-1]


# --- matching numpy's structure -----------------------------------------------------------


def _is_call(value, keys) -> bool:
    return isinstance(value, _Call) and value.func.key in keys


def _check_int(value, what: str, low: int = 0, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise _Refused(f"{what} must be an integer {bound}, got {_describe(value)} {value!r:.40}")
    return value


def _as_bytes(value, what: str) -> bytes:
    """Raw bytes: a bytes / bytearray value or protocol 2's `_codecs.encode(text, 'latin1')`."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if _is_call(value, {_ENCODE}):
        if value.has_state or len(value.args) != 2:
            raise _Refused(f"{what}: malformed latin-1 encoding")
        text, encoding = value.args
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise _Refused(f"{what}: malformed latin-1 encoding")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise _Refused(f"{what}: text that is not latin-1") from None
    raise _Refused(f"{what} must be bytes, got {_describe(value)}")


def _as_dtype(value) -> np.dtype | None:
    """The numeric dtype a pickled `numpy.dtype(...)` describes; None for the object dtype.

    numpy pickles a dtype as `dtype(code, False, True)` with the state
    `(3, byteorder, None, None, None, -1, -1, flags)`; the flags of a numeric dtype are 0
    and those of the object dtype 63. Any other state (another version, fields,
    subarrays, an item size, other flags) is refused: it is how a crafted file turns
    raw bytes into object pointers.
    """
    if not _is_call(value, {_DTYPE}):
        raise _Refused(f"an array's dtype must be a numpy dtype, got {_describe(value)}")
    if len(value.args) != 3 or value.args[1:] != (False, True):
        raise _Refused("a dtype made with unexpected arguments")
    code = value.args[0]
    if not isinstance(code, str):
        raise _Refused("a dtype made with unexpected arguments")
    state = value.state
    if not isinstance(state, tuple) or len(state) != 8:
        raise _Refused(f"dtype {code!r} has an unexpected state")
    version, order, subarray, names, fields, elsize, alignment, flags = state
    if (version, subarray, names, fields, elsize, alignment) != (3, None, None, None, -1, -1):
        raise _Refused(f"dtype {code!r} has an unexpected state")
    if type(flags) is not int or not isinstance(order, str):
        raise _Refused(f"dtype {code!r} has an unexpected state")
    if code in ("O8", "O4"):
        if order != "|" or flags != 63:
            raise _Refused(f"dtype {code!r} has an unexpected state")
        return None
    match = _PICKLE_DESCR.match(code)
    if not match or (match[1], int(match[2])) not in _NUMERIC:
        raise _Refused(f"unsupported dtype {code!r}; images and labels must be real numbers")
    if flags != 0 or order not in ("<", ">", "|", "="):
        raise _Refused(f"dtype {code!r} has an unexpected state (flags {flags}, order {order!r})")
    if order == "|" and int(match[2]) != 1:
        raise _Refused(f"dtype {code!r} has no byte order")
    return np.dtype(("=" if order == "|" else order) + code)


def _as_shape(value, limit: int) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_NDIM:
        raise _Refused(f"an array shape must be a tuple of at most {MAX_NDIM} sizes")
    shape = tuple(_check_int(v, "an array size") for v in value)
    if max(shape, default=0) > limit or math.prod(shape) > limit:
        raise _Refused(f"an array of shape {shape}: more values than the {limit} allowed")
    return shape


def _numeric_array(data, dtype: np.dtype, shape, fortran: bool) -> np.ndarray:
    raw = _as_bytes(data, "array data")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _Refused(
            f"an array of shape {shape} and dtype {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, the file has {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), order="C")  # a native, writable copy


def _as_array(value, max_pixels: int, allow_object: bool) -> np.ndarray:
    if _is_call(value, _FROMBUFFER):  # protocol 5: _frombuffer(buffer, dtype, shape, order)
        if value.has_state or len(value.args) != 4:
            raise _Refused("a protocol-5 array made with unexpected arguments")
        data, dtype_value, shape_value, order = value.args
        dtype = _as_dtype(dtype_value)
        if dtype is None or order not in ("C", "F"):
            raise _Refused("a protocol-5 array made with unexpected arguments")
        shape = _as_shape(shape_value, max_pixels)
        return _numeric_array(data, dtype, shape, order == "F")
    if not _is_call(value, _RECONSTRUCT):
        raise _Refused(f"expected a numpy array, got {_describe(value)}")
    args = value.args
    if (
        len(args) != 3
        or not isinstance(args[0], _Global)
        or args[0].key != _NDARRAY
        or args[1] != (0,)
        or _as_bytes(args[2], "array prototype") != b"b"
    ):
        raise _Refused("a numpy array reconstructed with unexpected arguments")
    state = value.state
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise _Refused("a numpy array with an unexpected state")
    _, shape_value, dtype_value, fortran, data = state
    if not isinstance(fortran, bool):
        raise _Refused("a numpy array with an unexpected state")
    dtype = _as_dtype(dtype_value)
    if dtype is not None:
        return _numeric_array(data, dtype, _as_shape(shape_value, max_pixels), fortran)
    if not allow_object:
        raise _Refused("an object array inside an object array")
    shape = _as_shape(shape_value, MAX_OBJECT_ITEMS)
    if not isinstance(data, _List):
        raise _Refused(f"an object array whose items are {_describe(data)}, not a list")
    if len(data.items) != math.prod(shape):
        raise _Refused(f"an object array of shape {shape} with {len(data.items)} items")
    items = [_as_item(item, max_pixels) for item in data.items]
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array.reshape(shape, order="F" if fortran else "C")


def _as_item(value, max_pixels: int):
    """One item of an object array: a numeric array or a number."""
    if isinstance(value, float) or type(value) is int:
        return value
    if _is_call(value, _SCALAR):
        if value.has_state or len(value.args) != 2:
            raise _Refused("a numpy number made with unexpected arguments")
        dtype = _as_dtype(value.args[0])
        raw = _as_bytes(value.args[1], "a numpy number")
        if dtype is None or len(raw) != dtype.itemsize:
            raise _Refused("a numpy number made with unexpected arguments")
        return np.frombuffer(raw, dtype=dtype)[0].astype(dtype.newbyteorder("="))
    if _is_call(value, _RECONSTRUCT | _FROMBUFFER):
        return _as_array(value, max_pixels, allow_object=False)
    raise _Refused(
        f"an object array item is {_describe(value)}; only numeric arrays and numbers are allowed"
    )


def parse_array_pickle(payload: bytes, source: str = "pickle", max_pixels=MAX_IMAGE_PIXELS):
    """The numpy array a pickle stream holds, read without unpickling.

    Accepts what numpy writes for a numeric array or for a small object array
    (at most `MAX_OBJECT_ITEMS` items) of numeric arrays and numbers, in pickle protocols
    2 to 5 and with numpy 1.x or 2.x module names. `max_pixels` bounds the values of each
    array. Raises DataError naming `source` for anything else.
    """
    try:
        value = _walk(payload)
        return _as_array(value, max_pixels, allow_object=True)
    except _Refused as error:
        raise DataError(f"{source}: {error}") from None
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, OverflowError) as error:
        # pickletools' own complaints: truncated arguments, no STOP, unknown opcode bytes
        raise DataError(f"{source}: truncated or malformed pickle ({error})") from None


# --- the .npy container -------------------------------------------------------------------


def _read_header(handle, path: str) -> tuple[str, bool, tuple]:
    magic = handle.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC:
        raise DataError(f"{path}: not a .npy file (no numpy magic string)")
    major, minor = magic[6], magic[7]
    if major not in (1, 2, 3) or minor != 0:
        raise DataError(f"{path}: not a .npy file (unknown format version {major}.{minor})")
    length_bytes = handle.read(2 if major == 1 else 4)
    if len(length_bytes) < (2 if major == 1 else 4):
        raise DataError(f"{path}: truncated .npy header")
    length = int.from_bytes(length_bytes, "little")
    if length > MAX_HEADER_BYTES:
        raise DataError(
            f"{path}: .npy header of {length} bytes (more than {MAX_HEADER_BYTES} allowed)"
        )
    raw = handle.read(length)
    if len(raw) != length:
        raise DataError(f"{path}: truncated .npy header")
    try:
        text = raw.decode("utf-8" if major == 3 else "latin-1")
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise DataError(f"{path}: .npy header is not a Python dict literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise DataError(f"{path}: .npy header must have exactly descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise DataError(f"{path}: unsupported dtype {descr!r} (images must be real numbers)")
    if not isinstance(fortran, bool):
        raise DataError(f"{path}: .npy header's fortran_order must be True or False")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_NDIM
        or not all(type(v) is int and v >= 0 for v in shape)
    ):
        raise DataError(
            f"{path}: .npy header's shape must be a tuple of at most {MAX_NDIM} sizes, "
            f"got {shape!r}"
        )
    return descr, fortran, shape


def _numeric_dtype(descr, path: str, text_ok: bool = False) -> np.dtype:
    """The dtype of a numeric `.npy` header's `descr`; DataError for anything else."""
    match = _NPY_DESCR.match(descr) if isinstance(descr, str) else None
    if match and (match[2], int(match[3])) in _NUMERIC:
        if match[1] == "|" and int(match[3]) != 1:
            raise DataError(f"{path}: unsupported dtype {descr!r} (no byte order)")
        return np.dtype(("=" if match[1] == "|" else match[1]) + match[2] + match[3])
    text = _TEXT_DESCR.match(descr) if text_ok and isinstance(descr, str) else None
    if text and 0 < int(text[2]) <= MAX_TEXT_CHARS:
        return np.dtype(text[1].lstrip("|") + text[2])
    raise DataError(
        f"{path}: unsupported dtype {descr!r}; images and labels must be real numbers "
        "(float, int or uint, or an [image, label] object array)"
    )


def _read_exactly(handle, nbytes: int, path: str, what: str) -> bytes:
    """`nbytes` from `handle`, read in pieces so memory follows the data actually there."""
    pieces, remaining = [], nbytes
    while remaining:
        piece = handle.read(min(remaining, 1 << 24))
        if not piece:
            raise DataError(f"{path}: {what} is truncated ({nbytes - remaining} of {nbytes} bytes)")
        pieces.append(piece)
        remaining -= len(piece)
    return b"".join(pieces)


def load_npy(path, max_pixels: int = MAX_IMAGE_PIXELS, allow_object: bool = True) -> np.ndarray:
    """Load one `.npy` file: a numeric array, or a small object array of numeric arrays and
    numbers (the DeepLense `[image, m]`), with at most `max_pixels` values per array.
    `allow_object=False` refuses object arrays (for inputs that must be a plain image).

    Nothing in the file is unpickled or called. Raises DataError naming the file for
    anything else: another dtype, a larger array, a truncated file, a pickle that is not
    numpy's plain structure (see the module docstring).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            descr, fortran, shape = _read_header(handle, path)
            offset = handle.tell()
            if descr == "|O" and not allow_object:
                raise DataError(
                    f"{path}: holds a pickled object array; a plain numeric array is expected"
                )
            if descr == "|O":
                # A pickle of <= 2 arrays; protocol 2 spells each byte as up to 2 of UTF-8.
                limit = MAX_OBJECT_ITEMS * 2 * 8 * max_pixels + 65536
                if size - offset > limit:
                    raise DataError(
                        f"{path}: {size - offset} bytes of pickled data, more than an "
                        f"[image, label] of at most {max_pixels} values needs"
                    )
                array = parse_array_pickle(handle.read(), path, max_pixels)
                if array.shape != shape:
                    raise DataError(
                        f"{path}: header says shape {shape} but the data has {array.shape}"
                    )
                return array
            dtype = _numeric_dtype(descr, path)
            count = math.prod(shape)
            if count > max_pixels:
                raise DataError(
                    f"{path}: array of shape {shape} has {count} values, more than the "
                    f"{max_pixels} allowed"
                )
            nbytes = count * dtype.itemsize
            if size - offset != nbytes:
                raise DataError(
                    f"{path}: shape {shape} of {dtype} needs {nbytes} bytes of data, the file "
                    f"has {size - offset} (truncated or padded)"
                )
            raw = handle.read(nbytes)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), order="C")


class NpzArchive:
    """The arrays of an `.npz` file, each read as `load_npy` reads a numeric `.npy`.

    `np.load` would trust each member's header and allocate the shape it declares; here
    the header is parsed as above, the data must have exactly the size the zip entry
    declares, and memory grows only with the data actually decompressed. Members hold
    numbers, or fixed-width text (`metadata`, `class_names`); object arrays are refused.
    `max_pixels` bounds the values of one row (one image); the number of rows is bounded
    by the data itself.
    """

    def __init__(self, path, max_pixels: int = MAX_IMAGE_PIXELS):
        self.path, self.max_pixels = os.fspath(path), max_pixels
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
            raise DataError(f"{self.path}: not a readable .npz file ({error})") from None
        self._infos = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        self.files = list(self._infos)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()

    def read(self, key: str, max_rows: int | None = None) -> np.ndarray:
        """Array `key` (its first `max_rows` rows when given); DataError naming file and key."""
        name = f"{self.path}: {key!r}"
        info = self._infos[key]
        try:
            with self._zip.open(info) as handle:
                descr, fortran, shape = _read_header(handle, name)
                if descr == "|O":
                    raise DataError(
                        f"{self.path}: cannot read {key!r} without pickle (object array)"
                    )
                dtype = _numeric_dtype(descr, name, text_ok=True)
                row = math.prod(shape[1:])
                if row > self.max_pixels:
                    raise DataError(
                        f"{name}: rows of shape {shape[1:]} have {row} values, more than the "
                        f"{self.max_pixels} allowed"
                    )
                nbytes = math.prod(shape) * dtype.itemsize
                available = info.file_size - handle.tell()
                if available != nbytes:
                    raise DataError(
                        f"{name}: shape {shape} of {dtype} needs {nbytes} bytes of data, the "
                        f"archive holds {available} (truncated or padded)"
                    )
                if max_rows is not None and shape and not fortran and max_rows < shape[0]:
                    shape = (max_rows, *shape[1:])
                    nbytes = math.prod(shape) * dtype.itemsize
                raw = _read_exactly(handle, nbytes, name, "the data")
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as error:
            raise DataError(f"{name} is corrupt ({error})") from None
        array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        if max_rows is not None and fortran:
            array = array[:max_rows]
        return array.astype(dtype.newbyteorder("="), order="C")
