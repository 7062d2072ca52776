"""Error kinds shared by the server and the clients.

TF Serving reports every failure as a canonical error code (the same codes as
gRPC) and, over REST, as ``{"error": "<message>"}`` with an HTTP status chosen
from the code. This module holds that mapping and the one exception type,
`ServingError`, that the local server raises internally and that both clients
raise with the server's own message.
"""

from __future__ import annotations

from deeplense_tf.errors import DeepLenseError

# Canonical code -> HTTP status, as TF Serving's http_server.cc maps them.
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
    # Not a canonical code: TF Serving's REST server has no body limit, ours answers
    # an oversized body with HTTP's own "payload too large".
    "PAYLOAD_TOO_LARGE": 413,
}

# Canonical code numbers (shared by TensorFlow's error codes and gRPC's status codes).
CODE_NAMES: tuple[str, ...] = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)


def code_name(number: int) -> str:
    """The canonical code name of a TensorFlow / gRPC error code number."""
    return CODE_NAMES[number] if 0 <= number < len(CODE_NAMES) else "UNKNOWN"


# HTTP status -> the code a client reports when it only has the status to go by.
_CODE_OF_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_for_http_status(status: int) -> str:
    """The canonical code a REST error status stands for (500 and unknown -> INTERNAL)."""
    return _CODE_OF_HTTP.get(int(status), "INTERNAL")


class ServingError(DeepLenseError):
    """A request failed; `message` is the server's own error text.

    Attributes:
        code: canonical error code name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"`` ...).
        message: the error message as the server sent it.
        http_status: the REST status code (derived from `code` when not given).
    """

    def __init__(self, code: str, message: str, http_status: int | None = None):
        self.code = code
        self.message = message
        self.http_status = int(http_status) if http_status is not None else HTTP_STATUS.get(code, 500)
        super().__init__(f"{code} ({self.http_status}): {message}")


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def unavailable(message: str) -> ServingError:
    return ServingError("UNAVAILABLE", message)


def wait_until_available(status, where: str, timeout: float) -> list[dict]:
    """Poll `status()` (a client's version states) until one is AVAILABLE.

    Shared by the REST and gRPC clients; raises `ServingError` naming `where` and the last
    states seen after `timeout` seconds.
    """
    import time

    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            states = status()
            if any(s["state"] == "AVAILABLE" for s in states):
                return states
            last = f"states {[(s['version'], s['state']) for s in states]}"
        except ServingError as err:
            last = err.message
        if time.monotonic() >= deadline:
            raise ServingError("DEADLINE_EXCEEDED",
                               f"{where} not available after {timeout:g} s (last: {last})")
        time.sleep(0.1)
