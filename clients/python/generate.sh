#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs for every file in proto/ into clients/python/gen/
# (gitignored), with grpcio-tools from requirements.txt. PYTHON names the interpreter that has
# them installed (default: python3).
#
# The contract imports google/protobuf/*.proto; grpcio-tools ships those files, and the code
# generated for them lives in the protobuf runtime (google.protobuf.struct_pb2, ...), so only
# our own files are generated and the import paths match the runtime's.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
out="$here/gen"

well_known="$("$python" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
if [[ ! -f "$well_known/google/protobuf/struct.proto" ]]; then
  echo "generate: grpcio-tools' bundled google/protobuf files are missing ($well_known)" >&2
  exit 1
fi

rm -rf "$out"
mkdir -p "$out"
cd "$root/proto"
mapfile -t files < <(find . -name '*.proto' -printf '%P\n' | sort)
"$python" -m grpc_tools.protoc -I . -I "$well_known" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
echo "generate: ${#files[@]} files from proto/ into ${out#"$root"/}"
