"""Compiled reading and writing of the big part of a REST body: a regular nested list of numbers.

A batch of 64 images is 262,144 numbers, 3.4 MB of JSON. Reading it with simdjson after a
bytes-level structure check cost ~17 ms of CPU on this project's 2-core benchmark machine
(against ~50 ms for the model): a large part of what made REST slower than gRPC. This
numba kernel does the job in one pass over the bytes, in about half that, without the GIL
(so other requests' threads run meanwhile):

- `read_numeric_list` checks that the text is one JSON array, nested to the same depth
  everywhere with the same length at each level (TF Serving's dense tensor), and reads its
  numbers exactly: a decimal with at most 19 significant digits and a power of ten within
  10^±22 is one correctly rounded float64 operation (Clinger's fast path, the rule strtod
  implementations use); the few other numbers are read by Python's `float`. TF Serving reads
  float inputs the same way, as a double then cast (rapidjson's GetFloat).

- `write_float32_list` (the REST client's side) writes a float32 array as nested lists,
  each number with the fewest digits that read back to it by that rule; two threads share
  a large array, ~30% less time than orjson's single-threaded 12 ms for 64 images on two
  idle cores (orjson holds the GIL).

Anything else (NaN, Infinity, empty lists, ragged lists, invalid JSON) is left to the
callers' general JSON paths, which give TF Serving's messages. numba comes with
lenstronomy (an install requirement); without it `available()` is False and callers keep
their slower paths.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - lenstronomy requires numba
    numba = None

MAX_RANK = 32  # deepest nesting read (json_tensors.MAX_JSON_RANK)
# Lists of at least this many bytes are read by two threads (~4 ms of CPU each on the
# benchmark machine); below it, handing work to a thread costs more than it saves.
PARALLEL_BYTES = 1 << 20
_MAX_SLOW = 4096  # room for numbers left to Python's float; a body with more is scanned again

# The decimal powers a double holds exactly: 10^0 .. 10^22 (what the reader uses); the
# writer scales float32 values (10^-45 .. 10^38) to nine digits with up to 10^53.
_POW10 = np.array([float(10**k) for k in range(23)], dtype=np.float64)
_POW10_WRITE = np.array([float(10**k) for k in range(64)], dtype=np.float64)
PARALLEL_NUMBERS = 1 << 16  # arrays written by two threads (a 64x64 image is 4096)

# Status codes of the reader.
_OK, _NOT_HANDLED, _TOO_MANY_SLOW = 0, 1, 2


def available() -> bool:
    """Whether the compiled reader can be used (numba importable)."""
    return numba is not None


def _jit(fn=None, *, inline: bool = False):
    if fn is None:
        return lambda f: _jit(f, inline=inline)
    if numba is None:
        return fn
    # cache=True keeps the compiled code on disk (__pycache__): later processes load it in
    # ~1 s instead of compiling for ~5. Helpers are inlined: a call that passes arrays
    # costs reference counting, more than the helper's own work.
    return numba.njit(nogil=True, cache=True, inline="always" if inline else "never")(fn)


@_jit(inline=True)
def _is_space(c):
    return c == 32 or c == 10 or c == 13 or c == 9


@_jit
def _scan(buf, pos, values, slow, dims, counts, pow10):
    """Reads the array at buf[pos] ('['); (status, end, rank, numbers, slow numbers).

    values[k] is the k-th number; slow[3j], slow[3j+1] bound the text of the j-th number
    left to Python and slow[3j+2] is its k; dims[1..rank] is the shape.
    """
    n = buf.shape[0]
    depth = 0
    rank = -1
    count = 0
    nslow = 0
    for d in range(MAX_RANK + 2):
        dims[d] = -1
        counts[d] = 0
    i = pos
    # expect: 0 = a value or ']' (just after '['), 1 = a value (after ','), 2 = ',' or ']'
    expect = 1
    while True:
        while i < n and _is_space(buf[i]):
            i += 1
        if i >= n:
            return _NOT_HANDLED, i, rank, count, nslow
        c = buf[i]
        if expect == 2:
            if c == 44:  # ','
                expect = 1
                i += 1
                continue
            if c != 93:  # ']'
                return _NOT_HANDLED, i, rank, count, nslow
            if dims[depth] < 0:
                dims[depth] = counts[depth]
            elif dims[depth] != counts[depth]:
                return _NOT_HANDLED, i, rank, count, nslow
            depth -= 1
            i += 1
            if depth == 0:
                return _OK, i, rank, count, nslow
            continue
        if c == 91:  # '['
            if depth > 0:
                counts[depth] += 1
            depth += 1
            if depth > MAX_RANK or (rank >= 0 and depth > rank):
                return _NOT_HANDLED, i, rank, count, nslow
            counts[depth] = 0
            expect = 0
            i += 1
            continue
        if c == 93 or depth == 0:  # an empty list, or the document is not an array
            return _NOT_HANDLED, i, rank, count, nslow
        # A number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
        if rank < 0:
            rank = depth
        elif depth != rank:
            return _NOT_HANDLED, i, rank, count, nslow
        start = i
        negative = False
        if c == 45:  # '-'
            negative = True
            i += 1
            if i >= n:
                return _NOT_HANDLED, i, rank, count, nslow
            c = buf[i]
        mantissa = np.uint64(0)
        digits = 0  # significant digits in mantissa
        exponent = 0  # decimal exponent to apply to mantissa
        exact = True
        if c == 48:  # '0': no more integer digits may follow
            i += 1
        elif 49 <= c <= 57:
            while i < n and 48 <= buf[i] <= 57:
                if digits < 19:
                    mantissa = mantissa * np.uint64(10) + np.uint64(buf[i] - 48)
                    digits += 1
                else:
                    exponent += 1
                    exact = False
                i += 1
        else:
            return _NOT_HANDLED, i, rank, count, nslow
        if i < n and buf[i] == 46:  # '.'
            i += 1
            first = i
            while i < n and 48 <= buf[i] <= 57:
                d = buf[i] - 48
                if digits == 0 and d == 0:
                    exponent -= 1  # leading zeros of 0.000123
                elif digits < 19:
                    mantissa = mantissa * np.uint64(10) + np.uint64(d)
                    digits += 1
                    exponent -= 1
                else:
                    exact = False
                i += 1
            if i == first:
                return _NOT_HANDLED, i, rank, count, nslow
        if i < n and (buf[i] == 101 or buf[i] == 69):  # 'e' / 'E'
            i += 1
            minus = False
            if i < n and (buf[i] == 43 or buf[i] == 45):
                minus = buf[i] == 45
                i += 1
            first = i
            value = 0
            while i < n and 48 <= buf[i] <= 57:
                if value < 100000:
                    value = value * 10 + (buf[i] - 48)
                i += 1
            if i == first:
                return _NOT_HANDLED, i, rank, count, nslow
            exponent += -value if minus else value
        if mantissa == 0 and exact:
            number = 0.0
        elif exact and mantissa < np.uint64(9007199254740992) and -22 <= exponent <= 22:
            number = float(mantissa)
            if exponent >= 0:
                number = number * pow10[exponent]
            else:
                number = number / pow10[-exponent]
        else:
            if nslow >= slow.shape[0] // 3:
                return _TOO_MANY_SLOW, i, rank, count, nslow
            slow[3 * nslow] = start
            slow[3 * nslow + 1] = i
            slow[3 * nslow + 2] = count
            nslow += 1
            number = 0.0  # set by the caller
        values[count] = -number if negative else number
        count += 1
        counts[depth] += 1
        expect = 2


def read_numeric_list(body: bytes, pos: int) -> tuple[int, np.ndarray] | None:
    """The regular nested list of numbers starting at body[pos] ('[').

    Returns (index just past its closing ']', float64 array of its shape), or None when
    the text is anything else (the caller's JSON path then reads it or explains why not).
    A list of more than `PARALLEL_BYTES` is read in two halves at once.
    """
    if numba is None:
        return None
    if len(body) - pos >= PARALLEL_BYTES and (os.cpu_count() or 1) > 1:
        halves = _read_in_halves(body, pos)
        if halves is not None:
            return halves
    return _read(body, pos)


def _read(body: bytes, pos: int) -> tuple[int, np.ndarray] | None:
    buf = np.frombuffer(body, dtype=np.uint8)
    # At most one number per two bytes; np.empty does not touch the pages it does not use.
    values = np.empty((len(body) - pos) // 2 + 1, dtype=np.float64)
    slow = np.empty(3 * _MAX_SLOW, dtype=np.int64)
    dims = np.empty(MAX_RANK + 2, dtype=np.int64)
    counts = np.empty(MAX_RANK + 2, dtype=np.int64)
    status, end, rank, count, nslow = _scan(buf, pos, values, slow, dims, counts, _POW10)
    if status == _TOO_MANY_SLOW:  # extreme exponents throughout: room for every number
        slow = np.empty(3 * values.shape[0], dtype=np.int64)
        status, end, rank, count, nslow = _scan(buf, pos, values, slow, dims, counts, _POW10)
    if status != _OK or rank < 1:
        return None
    for j in range(nslow):
        # float() rounds correctly from any number of digits (and gives +-inf beyond range)
        values[slow[3 * j + 2]] = float(body[slow[3 * j]:slow[3 * j + 1]])
    shape = tuple(int(d) for d in dims[1:rank + 1])
    if int(np.prod(shape)) != count:  # cannot happen for a list that passed the checks
        return None
    return end, values[:count].reshape(shape).copy()


def _read_in_halves(body: bytes, pos: int) -> tuple[int, np.ndarray] | None:
    """`_read` on two halves in two threads (the kernel runs without the GIL), or None.

    In a regular list of rank r a comma follows exactly r - 1 closing brackets only
    between top-level items, so the first "]]]," (r = 4) after the middle splits it into
    "[first items]" and "[last items]". Each half is checked on its own; the whole is the
    list they make only if the first ends exactly at its added bracket (so the comma was
    at the top level) and both have the same item shape. Otherwise: None (read it whole).
    """
    rank = 0
    i = pos
    while i < len(body) and i - pos < 4 * MAX_RANK and body[i] in b"[ \t\r\n":
        rank += body[i] == 0x5B
        i += 1
    comma = body.find(b"]" * (rank - 1) + b",", (pos + len(body)) // 2)
    if rank < 1 or comma < 0:
        return None
    comma += rank - 1
    first_text = body[pos:comma] + b"]"
    second_text = b"[" + body[comma + 1:]
    second = _pool().submit(_read, second_text, 0)
    first = _read(first_text, 0)
    second = second.result()
    if (first is None or second is None or first[0] != len(first_text)
            or first[1].shape[1:] != second[1].shape[1:]):
        return None
    return comma + second[0], np.concatenate([first[1], second[1]])


_POOL: list = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="json-numbers"))
        return _POOL[0]


@_jit
def _write(flat, shape, out, pow10):
    """Writes float32 `flat` (finite) as nested lists of `shape` into out; returns the length.

    Each number gets the fewest significant digits (9 or fewer) that read back to it: nine
    always do (float32 needs at most 9; the rounding of the product below is far smaller
    than half a float32 step), fewer are checked by reading them back exactly (only within
    10^+-22, where that read is one correctly rounded operation, as in `_scan`).
    """
    rank = shape.shape[0]
    index = np.zeros(rank, dtype=np.int64)
    digits = np.zeros(16, dtype=np.int64)
    o = 0
    for _ in range(rank):
        out[o] = 91
        o += 1
    n = flat.shape[0]
    for k in range(n):
        x = flat[k]
        v = float(x)
        if v < 0.0 or (v == 0.0 and np.signbit(x)):
            out[o] = 45
            o += 1
            v = -v
        if v == 0.0:
            out[o] = 48
            out[o + 1] = 46
            out[o + 2] = 48
            o += 3
        else:
            # log10 from the binary exponent; one too low at times, which the loop corrects
            e10 = int(math.floor((math.frexp(v)[1] - 1) * 0.3010299956639812))
            m = 0
            for _ in range(3):
                kk = 8 - e10
                s = v * pow10[kk] if kk >= 0 else v / pow10[-kk]
                m = int(s + 0.5)
                if m >= 1000000000:
                    e10 += 1
                elif m < 100000000:
                    e10 -= 1
                else:
                    break
            nd = 9
            p = 8
            while p >= 1:
                kk = p - 1 - e10
                if kk > 22 or kk < -22:
                    break
                s = v * pow10[kk] if kk >= 0 else v / pow10[-kk]
                mp = int(s + 0.5)
                if mp >= int(pow10[p]):
                    break
                ee = e10 - p + 1
                back = float(mp) * pow10[ee] if ee >= 0 else float(mp) / pow10[-ee]
                if np.float32(back) != np.float32(v):  # v is |x|, exactly
                    break
                m = mp
                nd = p
                p -= 1
            while nd > 1 and m % 10 == 0:  # 0.5, not 0.500000000
                m //= 10
                nd -= 1
            for j in range(nd - 1, -1, -1):
                digits[j] = 48 + m % 10
                m //= 10
            if -5 <= e10 < 16:
                if e10 < 0:
                    out[o] = 48
                    out[o + 1] = 46
                    o += 2
                    for _ in range(-e10 - 1):
                        out[o] = 48
                        o += 1
                    for j in range(nd):
                        out[o] = digits[j]
                        o += 1
                else:
                    for j in range(e10 + 1):
                        out[o] = digits[j] if j < nd else 48
                        o += 1
                    out[o] = 46
                    o += 1
                    if nd > e10 + 1:
                        for j in range(e10 + 1, nd):
                            out[o] = digits[j]
                            o += 1
                    else:
                        out[o] = 48
                        o += 1
            else:
                out[o] = digits[0]
                o += 1
                if nd > 1:
                    out[o] = 46
                    o += 1
                    for j in range(1, nd):
                        out[o] = digits[j]
                        o += 1
                out[o] = 101
                o += 1
                if e10 < 0:
                    out[o] = 45
                    o += 1
                    e10 = -e10
                if e10 >= 10:
                    out[o] = 48 + e10 // 10
                    o += 1
                out[o] = 48 + e10 % 10
                o += 1
        # close the lists this number ends and open the ones the next one starts
        level = rank - 1
        index[level] += 1
        closed = 0
        while level > 0 and index[level] == shape[level]:
            index[level] = 0
            level -= 1
            index[level] += 1
            closed += 1
        if k + 1 < n:
            for _ in range(closed):
                out[o] = 93
                o += 1
            out[o] = 44
            o += 1
            for _ in range(closed):
                out[o] = 91
                o += 1
    for _ in range(rank):
        out[o] = 93
        o += 1
    return o


def write_float32_list(arr: np.ndarray) -> bytes | None:
    """A finite float32 array (rank >= 1, no zero dimension) as nested JSON lists.

    None when numba is missing or the array is not of that kind (callers then use orjson
    or json). An array of at least `PARALLEL_NUMBERS` numbers is written by two threads,
    each half of the rows.
    """
    arr = np.asarray(arr)
    if (numba is None or arr.dtype != np.float32 or arr.ndim < 1 or arr.size == 0
            or arr.ndim > MAX_RANK or not np.isfinite(arr).all()):
        return None
    if arr.size >= PARALLEL_NUMBERS and arr.shape[0] > 1 and (os.cpu_count() or 1) > 1:
        middle = arr.shape[0] // 2
        second = _pool().submit(_write_array, arr[middle:])
        first = _write_array(arr[:middle])
        # "[a,b]" and "[c,d]" -> "[a,b,c,d]"
        return b"".join([first[:-1], b",", memoryview(second.result())[1:]])
    return _write_array(arr)


def _write_array(arr: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(arr).reshape(-1)
    shape = np.asarray(arr.shape, dtype=np.int64)
    lists = sum(int(np.prod(arr.shape[:k])) for k in range(arr.ndim))
    # "-1.2345678e-38" is 14 bytes, then a comma; two brackets per list
    out = np.empty(15 * arr.size + 2 * lists + 8, dtype=np.uint8)
    end = _write(flat, shape, out, _POW10_WRITE)
    return out[:end].tobytes()


def warm_up() -> None:
    """Compiles the reader (or loads it from the on-disk cache), off the first request's time."""
    if numba is None:
        return
    read_numeric_list(b"[[0.5, -1.25e-7]]", 0)


def warm_up_writer() -> None:
    """Compiles the writer (or loads it from numba's cache)."""
    if numba is not None:
        write_float32_list(np.array([[0.5, -1.25e-7]], dtype=np.float32))
