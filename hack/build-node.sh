#!/usr/bin/env bash
# Builds the dev node that runs the e2e tests' pods as real containers: kubelet,
# kube-scheduler and kube-proxy (the Kubernetes release of hack/tools/kubernetes),
# containerd with its runc shim and ctr (hack/tools/containerd), runc (hack/tools/runc) and
# the pause binary of the pod sandbox (hack/node/pause.c), into a cache outside the
# repository; and crictl (hack/tools/cri-tools), which lists the node's pods and containers
# as the kubelet sees them, for whoever looks at a running node.
#
# Debian's packages give the rest, installed with apt-get as root when missing:
# containernetworking-plugins (the pods' bridge network, /usr/lib/cni), and libseccomp-dev
# with pkg-config, which runc's seccomp support is built against.
#
# Progress goes to stderr; the last line on stdout is the directory holding the binaries,
# so callers can use `hack/build-node.sh | tail -n 1`. A second run with nothing changed
# does nothing. crictl has a stamp of its own, so that a checkout that builds the node
# without crictl finds the node up to date and leaves crictl in place.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_src="$repository/hack/tools"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"
cni_dir=/usr/lib/cni

log() { printf '[build-node] %s\n' "$*" >&2; }

# shellcheck source=hack/lib/go-builds.sh
source "$repository/hack/lib/go-builds.sh"

kubernetes_version="$(pinned_version kubernetes k8s.io/kubernetes)"
containerd_version="$(pinned_version containerd github.com/containerd/containerd/v2)"
runc_version="$(pinned_version runc github.com/opencontainers/runc)"

node_dir="$cache_root/node-$kubernetes_version"
bin_dir="$node_dir/bin"
binaries=(kubelet kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr runc pause)
stamp="$(
    printf 'kubernetes %s\ncontainerd %s\nrunc %s\n' \
        "$kubernetes_version" "$containerd_version" "$runc_version"
    cat "$tools_src"/{kubernetes,containerd,runc}/go.{mod,sum} "$repository/hack/node/pause.c" |
        sha256sum | cut -d' ' -f1
)"

missing_packages() {
    [[ -x "$cni_dir/bridge" && -x "$cni_dir/host-local" && -x "$cni_dir/loopback" ]] ||
        echo containernetworking-plugins
    pkg-config --exists libseccomp 2>/dev/null || echo libseccomp-dev pkg-config
    command -v iptables >/dev/null || echo iptables
}

up_to_date() {
    [[ -f "$node_dir/stamp" && "$(cat "$node_dir/stamp")" == "$stamp" ]] || return 1
    local binary
    for binary in "${binaries[@]}"; do
        [[ -x "$bin_dir/$binary" ]] || return 1
    done
    [[ -z "$(missing_packages)" ]]
}

cri_tools_version="$(pinned_version cri-tools sigs.k8s.io/cri-tools)"
crictl_stamp="$(
    printf 'cri-tools %s\n' "$cri_tools_version"
    cat "$tools_src"/cri-tools/go.{mod,sum} | sha256sum | cut -d' ' -f1
)"

crictl_up_to_date() {
    [[ -f "$node_dir/crictl.stamp" && "$(cat "$node_dir/crictl.stamp")" == "$crictl_stamp" ]] &&
        [[ -x "$bin_dir/crictl" ]]
}

# Into the node's directory as it is: only a rebuild of the node replaces that directory.
build_crictl() {
    local started=$SECONDS
    log "building with hack/tools/cri-tools"
    (cd "$tools_src/cri-tools" && CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${cri_tools_version#v}" \
        -o "$bin_dir/crictl.build" sigs.k8s.io/cri-tools/cmd/crictl)
    mv "$bin_dir/crictl.build" "$bin_dir/crictl"
    printf '%s\n' "$crictl_stamp" >"$node_dir/crictl.stamp"
    log "built crictl $cri_tools_version in $((SECONDS - started))s"
}

mkdir -p "$cache_root"
if up_to_date && crictl_up_to_date; then
    printf '%s\n' "$bin_dir"
    exit 0
fi
exec 9>"$cache_root/.node-build.lock"
flock 9
if up_to_date; then
    crictl_up_to_date || build_crictl
    printf '%s\n' "$bin_dir"
    exit 0
fi

read -r -a packages <<<"$(missing_packages | tr '\n' ' ')"
if ((${#packages[@]})); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing Debian packages: ${packages[*]} (sudo apt-get install ${packages[*]})"
        exit 1
    fi
    log "installing ${packages[*]}"
    apt-get update -qq >&2 && apt-get install -y -qq "${packages[@]}" >&2
fi

started=$SECONDS
staging="$(mktemp -d "$node_dir.build.XXXXXX")"
trap 'wait; rm -rf "$staging"' EXIT

build() {
    local builder="$1"
    shift
    log "building with hack/tools/$builder"
    (cd "$tools_src/$builder" && go build -trimpath "$@")
}

kubernetes_ldflags="-s -w $(kubernetes_version_ldflags "$kubernetes_version" \
    "$(module_commit kubernetes k8s.io/kubernetes)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
runc_ldflags="-s -w -X main.version=${runc_version#v}"

# containerd leaves out the snapshotters that need cgo or kernel modules the node does not
# use; the node runs overlayfs.
CGO_ENABLED=0 build kubernetes -ldflags "$kubernetes_ldflags" -o "$staging/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy &
CGO_ENABLED=0 build containerd -tags "no_btrfs no_devmapper no_zfs" -ldflags "$containerd_ldflags" \
    -o "$staging/" github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
CGO_ENABLED=1 build runc -tags seccomp -ldflags "$runc_ldflags" -o "$staging/runc" \
    github.com/opencontainers/runc
log "building pause (hack/node/pause.c)"
gcc -O2 -static -o "$staging/pause" "$repository/hack/node/pause.c"
wait %1

rm -rf "$bin_dir"
mkdir -p "$node_dir"
mv "$staging" "$bin_dir"
trap - EXIT
printf '%s\n' "$stamp" >"$node_dir/stamp"
log "built ${binaries[*]} in $((SECONDS - started))s"
build_crictl
printf '%s\n' "$bin_dir"
