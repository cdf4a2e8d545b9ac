#!/usr/bin/env bash
# Installs the Python peer (onnxruntime, numpy, OpenCV, Faiss, gRPC, matplotlib) into
# bench/out/peer-venv and generates its gRPC stubs from proto/ into bench/out/peer-gen.
# Usage: bash bench/peer/setup.sh   (from the repository root; idempotent)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/out/peer-venv
GEN=bench/out/peer-gen
if ! command -v python3 >/dev/null; then
  echo "python3 is needed" >&2; exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/peer/requirements.txt
mkdir -p "$GEN"
"$VENV/bin/python" -m grpc_tools.protoc -I proto/proto --python_out="$GEN" --grpc_python_out="$GEN" \
  proto/proto/lobby/v1/lobby.proto
touch "$GEN/lobby/__init__.py" "$GEN/lobby/v1/__init__.py"
"$VENV/bin/python" -c 'import onnxruntime, faiss, cv2, grpc, numpy; print("peer ready: onnxruntime", onnxruntime.__version__, "faiss", faiss.__version__, "opencv", cv2.__version__)'
