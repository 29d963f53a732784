#!/usr/bin/env bash
# Tests the Helm chart in helm/auth-sidecar with real Helm (helm-python-sdk embeds Helm v4's
# Go SDK; no helm binary needed) and the Kubernetes OpenAPI schemas (kubernetes-validate),
# then runs `auth-sidecar check-config` on every rendered config.toml.
#
#   scripts/test-chart.sh            # needs target/debug/auth-sidecar (cargo build) or AUTH_SIDECAR_BIN
#   CHART_TEST_SKIP_CHECK_CONFIG=1 scripts/test-chart.sh   # report check-config as skipped if no binary
#
# The venv lives in .venv-chart/ (it ignores itself for git) and is reused while the pins
# below are unchanged. Closes with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv-chart
PINS=(
  "helm-python-sdk==0.2.2"     # Helm v4.2.x SDK (lint, render, schema) via a bundled shared library
  "kubernetes-validate==1.37.0" # Kubernetes 1.25-1.37 JSON schemas
  "PyYAML==6.0.3"
)
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "test-chart.sh: Python 3.11 or newer is required (tomllib)" >&2
  exit 2
fi

stamp="$VENV/.pins"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${PINS[*]}" ]]; then
  echo "test-chart.sh: preparing $VENV (${PINS[*]})"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  printf '*\n' > "$VENV/.gitignore"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  printf '%s' "${PINS[*]}" > "$stamp"
fi

exec "$VENV/bin/python" scripts/chart_test.py "$@"
