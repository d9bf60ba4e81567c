#!/usr/bin/env bash
# Builds kube-router (hack/tools/kube-router) into a cache outside the repository: the dev
# node runs only its network policy controller, which enforces NetworkPolicy with iptables
# and ipset. The node's CNI bridge plugin enforces none, and kube-network-policies needs nft
# `queue` rules this kernel lacks.
#
# The module proxy serves kube-router v2.1.0 and nothing newer, and security flaws are
# reported for that version. It runs only on the test node, on this machine, against the
# tests' own API server; never ship it to a cluster.
#
# Debian's ipset, which the controller runs, is installed with apt-get as root when missing.
#
# Progress goes to stderr; the last line on stdout is the directory holding the binary, so
# callers can use `hack/build-kube-router.sh | tail -n 1`. A second run with nothing changed
# does nothing.
set -euo pipefail

tools_src="$(cd "$(dirname "${BASH_SOURCE[0]}")/tools" && pwd)"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"

log() { printf '[build-kube-router] %s\n' "$*" >&2; }

# shellcheck source=hack/lib/go-builds.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-builds.sh"

module=github.com/cloudnativelabs/kube-router/v2
version="$(pinned_version kube-router "$module")"
build_dir="$cache_root/kube-router-$version"
bin_dir="$build_dir/bin"
stamp="$(cat "$tools_src/kube-router"/go.{mod,sum} | sha256sum | cut -d' ' -f1)"

up_to_date() {
    [[ -f "$build_dir/stamp" && "$(cat "$build_dir/stamp")" == "$stamp" ]] &&
        [[ -x "$bin_dir/kube-router" ]] && command -v ipset >/dev/null
}

mkdir -p "$cache_root"
if up_to_date; then
    printf '%s\n' "$bin_dir"
    exit 0
fi
exec 9>"$cache_root/.kube-router-build.lock"
flock 9
if up_to_date; then
    printf '%s\n' "$bin_dir"
    exit 0
fi

if ! command -v ipset >/dev/null; then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing Debian package: ipset (sudo apt-get install ipset)"
        exit 1
    fi
    log "installing ipset"
    apt-get update -qq >&2 && apt-get install -y -qq ipset >&2
fi

started=$SECONDS
staging="$(mktemp -d "$build_dir.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
log "building $module/cmd/kube-router (hack/tools/kube-router)"
(cd "$tools_src/kube-router" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X $module/pkg/version.Version=$version" \
    -o "$staging/kube-router" "$module/cmd/kube-router")

rm -rf "$bin_dir"
mkdir -p "$build_dir"
mv "$staging" "$bin_dir"
trap - EXIT
printf '%s\n' "$stamp" >"$build_dir/stamp"
log "built kube-router $version in $((SECONDS - started))s"
printf '%s\n' "$bin_dir"
