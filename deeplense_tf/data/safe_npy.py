"""Read `.npy` files, including pickled object arrays, without running arbitrary code.

The published DeepLense files are object arrays `[image, label]`, which numpy stores as a
pickle. `np.load(allow_pickle=True)` would let such a file call any Python function
(`os.system`, ...) while it loads, so we never use it. Instead the pickle payload goes
through `RestrictedUnpickler`, which resolves only the handful of numpy functions needed
to rebuild arrays and scalars; any other global in the stream is refused with a
`DataError` before it is called.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from deeplense_tf.errors import DataError

try:  # numpy >= 2 moved the pickle helpers to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray


# (module, name) -> object: everything a pickled ndarray / numpy scalar can refer to.
_ALLOWED_GLOBALS = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(_module, "scalar")] = _multiarray.scalar
_ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
# Python 2 era pickles (protocol 2) encode the array bytes as latin-1 text.
_ALLOWED_GLOBALS[("_codecs", "encode")] = __import__("codecs").encode


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and numbers and refuses everything else."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays and numbers are allowed"
            ) from None


def restricted_loads(payload: bytes, source: str = "pickle"):
    """Unpickle `payload` with `RestrictedUnpickler`; DataError naming `source` if refused."""
    try:
        return RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{source}: {error}") from None
    except Exception as error:  # malformed stream: EOFError, ValueError, TypeError ...
        raise DataError(
            f"{source}: not a readable numpy pickle ({type(error).__name__}: {error})"
        ) from None


def load_npy(path) -> np.ndarray:
    """Load one `.npy` file; object arrays go through the restricted unpickler.

    Raises DataError naming the file when it is not a `.npy` file or holds anything but
    numpy arrays and numbers.
    """
    path = str(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                # numpy's own reader handles newer headers; it still refuses pickles.
                handle.seek(0)
                return np.load(handle, allow_pickle=False)
            if not dtype.hasobject:
                handle.seek(0)
                return np.load(handle, allow_pickle=False)
            payload = handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise DataError(f"{path}: not a .npy file ({error})") from None
    array = restricted_loads(payload, source=path)
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: the pickle holds a {type(array).__name__}, not a numpy array")
    if array.shape != tuple(shape):
        raise DataError(f"{path}: header says shape {tuple(shape)} but the data has {array.shape}")
    return array
