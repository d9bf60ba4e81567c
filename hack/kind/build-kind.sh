#!/usr/bin/env bash
# Builds what `make kind-demo` needs on a machine that cannot pull kind's images: kind
# (hack/tools/kind) and kubeadm (hack/tools/kubernetes) from the Go module proxy, and a kind
# node image made here, localhost/tars-kind-node:<kubernetes version>-<recipe digest>.
#
# The node image (hack/kind/node/Containerfile) is kind's own base-image files (from the
# pinned kind module) on a Debian trixie rootfs from debootstrap (TARS_DEBIAN_MIRROR), with
# the project's kubelet, kubeadm, kubectl, containerd and runc (hack/build-tools.sh,
# hack/build-node.sh). The images kubeadm starts come with it under /kind/images (the
# node's containerd imports them when it starts), built from the same binaries:
# kube-apiserver, kube-controller-manager, kube-scheduler, etcd and pause on an empty base,
# kube-proxy on the node's rootfs (it runs iptables). Each is tagged with the name kubeadm
# asks for, so etcd's tag names kubeadm's etcd release, not the one this project pins.
# CoreDNS (hack/tools/coredns) gives pods names, the package index's included. kind's
# kindnetd and local-path provisioner are not built: the node puts its pods on a bridge
# (hack/kind/node/etc/cni) and has a default StorageClass without a provisioner.
#
# The images are built with the engine of hack/build-images.sh (docker when its daemon
# answers, else podman with that script's containers.conf), which this script runs first.
# Progress goes to stderr; the last line on stdout is a directory holding bin/kind,
# bin/kubeadm and node-image (the image's name), so callers can use
# `hack/kind/build-kind.sh | tail -n 1`. A second run with nothing changed does nothing.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_src="$repository/hack/tools"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"
debian_mirror="${TARS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
debian_suite=trixie
# What kind's base image installs for a node, less NFS/iSCSI and fuse-overlayfs (rootless),
# plus Debian's CNI plugins.
node_packages=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,procps,e2fsprogs,jq,containernetworking-plugins

# Debian's PATH, for the rootfs and for the component images (kube-proxy runs iptables).
path_env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[build-kind] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

# shellcheck source=hack/lib/go-builds.sh
source "$repository/hack/lib/go-builds.sh"
# shellcheck source=hack/lib/rootfs.sh
source "$repository/hack/lib/rootfs.sh"

kind_version="$(pinned_version kind sigs.k8s.io/kind)"
kubernetes_version="$(pinned_version kubernetes k8s.io/kubernetes)"
kind_dir="$cache_root/kind-$kind_version-k8s-$kubernetes_version"
bin_dir="$kind_dir/bin"

images_dir="$("$repository/hack/build-images.sh" | tail -n 1)"
tools_bin="$("$repository/hack/build-tools.sh" | tail -n 1)"
node_bin="$("$repository/hack/build-node.sh" | tail -n 1)"
engine="$(sed -n 's/^ *"engine": "\(.*\)",$/\1/p' "$images_dir/images.json")"
build=("$engine" build)
if [[ "$engine" != docker ]]; then
    export CONTAINERS_CONF="$images_dir/containers.conf"
    # podman's builds read the runtime from containers.conf but not the ulimits.
    read -r -a ulimits <<<"$(sed -n 's/^default_ulimits = \[\(.*\)\]$/\1/p' "$CONTAINERS_CONF" | tr -d '",')"
    build+=(--runtime runc)
    for ulimit in "${ulimits[@]}"; do build+=(--ulimit "$ulimit"); done
fi

mkdir -p "$kind_dir"
exec 9>"$kind_dir/.build.lock"
flock 9

binaries_stamp="$(cat "$tools_src"/{kind,kubernetes,coredns}/go.{mod,sum} | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$kind_dir/binaries.stamp" 2>/dev/null)" != "$binaries_stamp" ||
    ! -x "$bin_dir/kind" || ! -x "$bin_dir/kubeadm" || ! -x "$bin_dir/coredns" ]]; then
    started=$SECONDS
    staging="$(mktemp -d "$kind_dir/bin.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    log "building kind $kind_version (hack/tools/kind)"
    (cd "$tools_src/kind" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$staging/" sigs.k8s.io/kind)
    log "building kubeadm $kubernetes_version (hack/tools/kubernetes)"
    kubernetes_ldflags="$(kubernetes_version_ldflags "$kubernetes_version" \
        "$(module_commit kubernetes k8s.io/kubernetes)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    (cd "$tools_src/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $kubernetes_ldflags" \
        -o "$staging/" k8s.io/kubernetes/cmd/kubeadm)
    log "building CoreDNS $(pinned_version coredns github.com/coredns/coredns) (hack/tools/coredns)"
    (cd "$tools_src/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
        -o "$staging/" github.com/coredns/coredns)
    rm -rf "$bin_dir"
    mv "$staging" "$bin_dir"
    trap - EXIT
    printf '%s\n' "$binaries_stamp" >"$kind_dir/binaries.stamp"
    log "built kind, kubeadm and CoreDNS in $((SECONDS - started))s"
fi

has_image() {
    case "$engine" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        *) "$engine" image exists "$1" ;;
    esac
}

kind_files="$(cd "$tools_src/kind" && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)/images/base/files"
node_files="$repository/hack/kind/node"
recipe="debootstrap minbase $debian_suite $node_packages"
node_digest="$(
    printf '%s\n' "$recipe" "kind $kind_version" "${build[@]}"
    (cd "$node_files" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    (cd "$kind_files" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    sha256sum "$bin_dir/kubeadm" "$tools_bin"/{kubectl,kube-apiserver,kube-controller-manager,etcd} \
        "$node_bin"/{kubelet,kube-proxy,kube-scheduler,containerd,containerd-shim-runc-v2,ctr,runc,pause} |
        cut -d' ' -f1
    cat "${BASH_SOURCE[0]}"
)"
node_image="localhost/tars-kind-node:$kubernetes_version-$(printf '%s' "$node_digest" | sha256sum | cut -c1-12)"
if has_image "$node_image"; then
    printf '%s\n' "$node_image" >"$kind_dir/node-image"
    printf '%s\n' "$kind_dir"
    exit 0
fi

# The node's rootfs, made once with debootstrap and kept as a tarball.
rootfs_name="localhost/tars-kind-rootfs:$debian_suite-$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
rootfs_tarball="$kind_dir/${rootfs_name##*/}.tar"
rootfs_tarball="${rootfs_tarball/:/-}"
if ! has_image "$rootfs_name"; then
    rootfs_tarball "$rootfs_tarball" "$debian_suite" "$debian_mirror" "$node_packages"
    log "importing $rootfs_name"
    "$engine" import --change "ENV $path_env" \
        "$rootfs_tarball" "$rootfs_name" >/dev/null
fi

started=$SECONDS
context="$(mktemp -d "$kind_dir/context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/images" "$context/node"
cp -r "$kind_files" "$context/kind-base"
# The module cache is read-only.
chmod -R u+w "$context/kind-base"
cp "$tools_bin/kubectl" "$bin_dir/kubeadm" "$node_bin"/{kubelet,containerd,containerd-shim-runc-v2,ctr,runc} "$context/bin/"
cp -r "$node_files/etc" "$node_files/kind" "$context/node/"
printf '%s' "$kubernetes_version" >"$context/node/kind/version"

# One image kubeadm (or containerd's sandbox) asks for, saved into the node's /kind/images.
component_image() {
    local name="$1" base="$2" binary="$3" entrypoint="$4" component
    component="$(mktemp -d "$context/component.XXXXXX")"
    cp "$binary" "$component/"
    {
        printf 'FROM %s\n' "$base"
        printf 'ENV %s\n' "$path_env"
        printf 'COPY %s /usr/local/bin/\n' "${binary##*/}"
        [[ -z "$entrypoint" ]] || printf 'ENTRYPOINT ["/usr/local/bin/%s"]\n' "$entrypoint"
    } >"$component/Containerfile"
    log "building $name"
    "${build[@]}" --quiet --file "$component/Containerfile" --tag "$name" "$component" >/dev/null
    "$engine" save --output "$context/images/${name//[\/:]/_}.tar" "$name" >&2
    # The name only has to be right inside the node; not in this machine's own images.
    "$engine" rmi "$name" >/dev/null
    rm -rf "$component"
}
sandbox_image="$(sed -n 's/^ *sandbox_image = "\(.*\)"$/\1/p' "$kind_files/etc/containerd/config.toml")"
[[ -n "$sandbox_image" ]] || fail "kind's containerd config names no sandbox_image"
while read -r wanted; do
    component="${wanted##*/}"
    component="${component%%:*}"
    case "$component" in
        kube-apiserver | kube-controller-manager) component_image "$wanted" scratch "$tools_bin/$component" "" ;;
        kube-scheduler) component_image "$wanted" scratch "$node_bin/$component" "" ;;
        etcd) component_image "$wanted" scratch "$tools_bin/etcd" "" ;;
        kube-proxy) component_image "$wanted" "$rootfs_name" "$node_bin/kube-proxy" "" ;;
        coredns) component_image "$wanted" scratch "$bin_dir/coredns" coredns ;;
        pause) ;;
        *) log "not built: $wanted (the demo does without it)" ;;
    esac
done < <("$bin_dir/kubeadm" config images list --kubernetes-version "$kubernetes_version")
component_image "$sandbox_image" scratch "$node_bin/pause" pause

log "building $node_image"
"${build[@]}" --file "$node_files/Containerfile" --build-arg "NODE_BASE=$rootfs_name" \
    --tag "$node_image" "$context" >&2
rm -rf "$context"
trap - EXIT
previous="$(cat "$kind_dir/node-image" 2>/dev/null || true)"
if [[ -n "$previous" && "$previous" != "$node_image" ]] && has_image "$previous"; then
    "$engine" rmi "$previous" >/dev/null || log "could not remove the previous node image $previous"
fi
printf '%s\n' "$node_image" >"$kind_dir/node-image"
log "built $node_image in $((SECONDS - started))s"
printf '%s\n' "$kind_dir"
