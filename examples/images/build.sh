#!/usr/bin/env bash
# Build the stand-in images the examples use, from the local base image made by
# scripts/setup-containers.sh (no registry needed). Idempotent and quick.
set -euo pipefail
cd "$(dirname "$0")"
# Debian's client builds without the legacy-builder notice the newer CLI prints.
DOCKER=$(command -v /usr/bin/docker || command -v docker)
build() { # tag context
  "$DOCKER" build -q -t "$1" "$2" >/dev/null
}
build my-org/my-model:v1.0 my-model
build my-org/activitysim:v1.0 activitysim
"$DOCKER" tag my-org/activitysim:v1.0 my-org/activitysim:v1
build my-org/preprocess:v1 preprocess
if command -v apptainer >/dev/null 2>&1; then
  out=../work/images/my_model.sif
  mkdir -p "$(dirname "$out")"
  id=$("$DOCKER" image inspect -f '{{.Id}}' my-org/my-model:v1.0)
  if [ ! -s "$out" ] || [ "$(cat "$out.id" 2>/dev/null)" != "$id" ]; then
    apptainer -q build --force --mksquashfs-args "-comp zstd -Xcompression-level 3" "$out" docker-daemon://my-org/my-model:v1.0
    echo "$id" >"$out.id"
  fi
fi
echo "[examples] images ready" >&2
