#!/usr/bin/env bash
# Builds the pinned control plane (kube-apiserver, kube-controller-manager, kubectl,
# etcd, helm) from the Go module proxy into a cache outside the repository.
#
# The versions are the ones pinned by the builder modules in hack/tools/*/go.mod (with
# their committed go.sum). Progress goes to stderr; the last line on stdout is the
# directory holding the binaries, so callers can use `hack/build-tools.sh | tail -n 1`.
# When the binaries for the pinned versions are already cached it does nothing.
set -euo pipefail

tools_src="$(cd "$(dirname "${BASH_SOURCE[0]}")/tools" && pwd)"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# shellcheck source=hack/lib/go-builds.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-builds.sh"

kubernetes_version="$(pinned_version kubernetes k8s.io/kubernetes)"
etcd_version="$(pinned_version etcd go.etcd.io/etcd/server/v3)"
helm_version="$(pinned_version helm helm.sh/helm/v3)"

tools_dir="$cache_root/k8s-$kubernetes_version"
bin_dir="$tools_dir/bin"
binaries=(kube-apiserver kube-controller-manager kubectl etcd helm)
# The stamp names every pinned version and the exact module sums of the builders used
# here, so any change to them rebuilds and nothing else does.
stamp="$(
    printf 'kubernetes %s\netcd %s\nhelm %s\n' "$kubernetes_version" "$etcd_version" "$helm_version"
    cat "$tools_src"/{kubernetes,etcd,helm}/go.{mod,sum} | sha256sum | cut -d' ' -f1
)"

up_to_date() {
    [[ -f "$tools_dir/stamp" && "$(cat "$tools_dir/stamp")" == "$stamp" ]] || return 1
    local binary
    for binary in "${binaries[@]}"; do
        [[ -x "$bin_dir/$binary" ]] || return 1
    done
}

mkdir -p "$cache_root"
if up_to_date; then
    printf '%s\n' "$bin_dir"
    exit 0
fi

# Two builds at once (say, `make test` in two shells) would only fight over the CPU.
exec 9>"$cache_root/.build.lock"
flock 9
if up_to_date; then
    printf '%s\n' "$bin_dir"
    exit 0
fi

export CGO_ENABLED=0
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
staging="$(mktemp -d "$tools_dir.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
started=$SECONDS

build() {
    local builder="$1" ldflags="$2" output="$3"
    shift 3
    log "building $* (hack/tools/$builder)"
    (cd "$tools_src/$builder" && go build -trimpath -ldflags "-s -w $ldflags" -o "$output" "$@")
}

# The module proxy does not record the commit of Kubernetes releases, so this is usually empty.
kubernetes_commit="$(module_commit kubernetes k8s.io/kubernetes)"
kubernetes_ldflags="$(kubernetes_version_ldflags "$kubernetes_version" "$kubernetes_commit" "$build_date")"

etcd_commit="$(module_commit etcd go.etcd.io/etcd/server/v3)"
etcd_ldflags="${etcd_commit:+-X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_commit:0:8}}"

helm_client_go="$(cd "$tools_src/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
helm_k8s_minor="${helm_client_go#v0.}"
helm_k8s_minor="${helm_k8s_minor%%.*}"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$(module_commit helm helm.sh/helm/v3)"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for package in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$helm_k8s_minor"
done

# go build already spreads one build over both cores, but the Kubernetes build ends in
# long single-threaded links; etcd and helm build alongside it to use that idle time.
# The three Kubernetes binaries share one invocation so their common packages compile once.
build kubernetes "$kubernetes_ldflags" "$staging/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl &
kubernetes_build=$!
# On failure, let a running build finish before its output directory goes away.
trap 'wait; rm -rf "$staging"' EXIT
build etcd "$etcd_ldflags" "$staging/etcd" go.etcd.io/etcd/server/v3
build helm "$helm_ldflags" "$staging/" helm.sh/helm/v3/cmd/helm
wait "$kubernetes_build"

rm -rf "$bin_dir"
mkdir -p "$tools_dir"
mv "$staging" "$bin_dir"
trap - EXIT
printf '%s\n' "$stamp" >"$tools_dir/stamp"
log "built ${binaries[*]} in $((SECONDS - started))s"
printf '%s\n' "$bin_dir"
