#!/usr/bin/env bash
# Serve the exported SAT3D bundle with a real MONAI Label 0.8.5 server on 127.0.0.1 and call /infer with
# and without clicks. Builds its own virtual environment (torch 2.14.1 + torchvision 0.29.1, about 6 GB):
#   bash tests/mlabel_server/run.sh            (SAT3D_MLABEL_VENV=/path to choose where the venv goes)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${SAT3D_MLABEL_VENV:-/tmp/sat3d-mlabel-venv}"
if [ ! -x "$VENV/bin/monailabel" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q monailabel==0.8.5 monai==1.6.1 pydicom==2.4.4 dicomweb-client==0.59.1 pynetdicom==2.0.2
fi
"$VENV/bin/pip" install -q -e ".[test]"
"$VENV/bin/python" -m pytest -q tests/mlabel_server "$@"
