#!/usr/bin/env bash
# Serve `deeplense export` output with the official TensorFlow Serving image.
#
#   serving/docker-run.sh EXPORT_DIR              # every model in EXPORT_DIR/models.config
#   serving/docker-run.sh EXPORT_DIR deeplense    # one model: EXPORT_DIR/deeplense/<version>/
#
# REST on 127.0.0.1:8501 and gRPC on 127.0.0.1:8500, as `deeplense serve` (same API);
# BIND=0.0.0.0 publishes them on every interface. The export folder is mounted read-only
# at the same absolute path, so the absolute base_path values `deeplense export` writes
# into models.config work unchanged inside the container. Batching parameters:
# EXPORT_DIR/batching_parameters.txt when present, else serving/batching_parameters.txt.
# New version folders are picked up within a second; models.config is re-read each minute.
#
# The image is pinned to TF Serving 2.21.0, the release built on the TensorFlow (2.21) that
# `deeplense export` writes SavedModels with; an older TF Serving may lack ops the model
# uses. Prometheus metrics: http://127.0.0.1:8501/monitoring/prometheus/metrics
# (serving/monitoring_config.txt). TF_SERVING_IMAGE overrides the image.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 EXPORT_DIR [MODEL_NAME]" >&2
  exit 2
fi
EXPORT_DIR=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${TF_SERVING_IMAGE:-tensorflow/serving:2.21.0}
BIND=${BIND:-127.0.0.1}

BATCHING="$EXPORT_DIR/batching_parameters.txt"
[[ -f "$BATCHING" ]] || BATCHING="$HERE/batching_parameters.txt"

if [[ $# -eq 2 ]]; then
  [[ -d "$EXPORT_DIR/$2" ]] || { echo "$0: no model folder $EXPORT_DIR/$2" >&2; exit 1; }
  MODEL_ARGS=(--model_name="$2" --model_base_path="$EXPORT_DIR/$2")
else
  [[ -f "$EXPORT_DIR/models.config" ]] || {
    echo "$0: no $EXPORT_DIR/models.config (give a MODEL_NAME, or re-run deeplense export)" >&2
    exit 1
  }
  MODEL_ARGS=(--model_config_file="$EXPORT_DIR/models.config" --model_config_file_poll_wait_seconds=60)
fi

exec docker run --rm --name "${CONTAINER_NAME:-deeplense-serving}" \
  -p "$BIND:8500:8500" -p "$BIND:8501:8501" \
  -v "$EXPORT_DIR:$EXPORT_DIR:ro" \
  -v "$BATCHING:/etc/tfserving/batching_parameters.txt:ro" \
  -v "$HERE/monitoring_config.txt:/etc/tfserving/monitoring_config.txt:ro" \
  "$IMAGE" \
  "${MODEL_ARGS[@]}" \
  --enable_batching=true \
  --batching_parameters_file=/etc/tfserving/batching_parameters.txt \
  --monitoring_config_file=/etc/tfserving/monitoring_config.txt \
  --file_system_poll_wait_seconds=1 \
  --rest_api_timeout_in_ms=30000
