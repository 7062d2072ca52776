"""Model status and metadata: TF Serving's JSON shapes, and the plain dicts clients return.

The REST API answers ``GET /v1/models/{name}`` with
``{"model_version_status": [{"version": "1", "state": "AVAILABLE", "status":
{"error_code": "OK", "error_message": ""}}]}`` and ``.../metadata`` with the
model spec and the SignatureDefs as protobuf JSON. Both clients turn those (or
their gRPC equivalents) into the same plain Python structures:

- status: ``[{"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]``
- metadata: ``{"name": str, "version": int, "signatures": {sig: {"method_name": str,
  "inputs": {name: {"dtype": "DT_FLOAT", "shape": [-1, 64, 64, 1]}}, "outputs": {...}}},
  "raw": <the server's JSON>}``; a shape is None when its rank is unknown.
"""

from __future__ import annotations


def status_json(statuses: list[dict]) -> dict:
    """TF Serving's GetModelStatus JSON from plain status dicts (see module docstring)."""
    return {
        "model_version_status": [
            {
                "version": str(s["version"]),
                "state": s["state"],
                "status": {"error_code": s["error_code"], "error_message": s["error_message"]},
            }
            for s in statuses
        ]
    }


def metadata_json(name: str, version: int, signature_defs: dict[str, dict]) -> dict:
    """TF Serving's GetModelMetadata JSON; `signature_defs` are SignatureDefs as protobuf JSON."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": signature_defs}},
    }


def parse_status(doc: dict) -> list[dict]:
    """Plain status dicts from a GetModelStatus JSON answer."""
    out = []
    for entry in doc.get("model_version_status", []):
        status = entry.get("status", {}) or {}
        out.append({
            "version": int(entry.get("version", 0)),
            "state": entry.get("state", "UNKNOWN"),
            "error_code": status.get("error_code", "OK"),
            "error_message": status.get("error_message", ""),
        })
    return out


def _tensor_info(info: dict) -> dict:
    shape_doc = info.get("tensor_shape", {}) or {}
    if shape_doc.get("unknown_rank"):
        shape = None
    else:
        shape = [int(d.get("size", -1)) for d in shape_doc.get("dim", [])]
    return {"dtype": info.get("dtype", "DT_INVALID"), "shape": shape}


def parse_metadata(doc: dict) -> dict:
    """Plain metadata dict from a GetModelMetadata JSON answer."""
    spec = doc.get("model_spec", {}) or {}
    defs = ((doc.get("metadata", {}) or {}).get("signature_def", {}) or {}).get("signature_def", {})
    signatures = {}
    for sig_name, sig in (defs or {}).items():
        signatures[sig_name] = {
            "method_name": sig.get("method_name", ""),
            "inputs": {k: _tensor_info(v) for k, v in (sig.get("inputs") or {}).items()},
            "outputs": {k: _tensor_info(v) for k, v in (sig.get("outputs") or {}).items()},
        }
    version = spec.get("version")
    return {
        "name": spec.get("name", ""),
        "version": int(version) if version not in (None, "") else None,
        "signatures": signatures,
        "raw": doc,
    }
