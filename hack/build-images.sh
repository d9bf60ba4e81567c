#!/usr/bin/env bash
# Builds both TARS images from replica-images/Dockerfile: tars-replica:<version> (target
# replica) and tars-operator:<version> (target operator), <version> being the project's
# (pyproject.toml, the chart's appVersion).
#
# - The engine: docker when its daemon answers, else podman (installed with apt-get as
#   root when missing, with Debian's runc), else buildah. TARS_IMAGE_ENGINE=docker|podman|
#   buildah chooses.
# - podman and buildah run with runc (crun refuses cgroup v1 in hybrid mode, as some hosts
#   have it) and with ulimits no higher than this shell's (raising them needs
#   CAP_SYS_RESOURCE): both go into a containers.conf in the cache, which the builds use
#   through CONTAINERS_CONF; use it for your own `podman run`s too (the last line's
#   directory holds it). Nothing under /etc is changed.
# - The base image (TARS_IMAGE_BASE): `auto` (the default) uses the Dockerfile's pinned
#   public image when the engine has it or pulls it within TARS_IMAGE_PULL_TIMEOUT seconds
#   (default 60), else makes a local one; `local` always makes the local one; any other
#   value is an image to build on. The local base is Debian trixie from debootstrap
#   (TARS_DEBIAN_MIRROR, default http://deb.debian.org/debian) with its Python (3.13) as
#   `python`, imported as localhost/tars-base-python:trixie-<recipe digest>; its tarball
#   stays in the cache, so debootstrap runs once. Not bookworm: its Python 3.11.2 predates
#   tarfile's extraction filters (3.11.4), which the tester's snapshots are extracted with.
# - pip inside the builds: host network; the index this machine's pip uses (PIP_INDEX_URL,
#   PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST or pip's config) as build arguments; the CA
#   bundle it trusts (PIP_CERT, pip's `cert`, else the system bundle) as a build secret, so
#   it is never in a layer.
#
# Progress goes to stderr; the last line on stdout is a directory holding images.json (the
# engine and the tags) and containers.conf, so callers can use
# `hack/build-images.sh | tail -n 1`. A rerun with nothing changed reuses every layer.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"
dockerfile="$repository/replica-images/Dockerfile"
images_dir="$cache_root/images"
base_choice="${TARS_IMAGE_BASE:-auto}"
pull_timeout="${TARS_IMAGE_PULL_TIMEOUT:-60}"
debian_mirror="${TARS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
debian_suite=trixie
# python3-venv brings ensurepip's wheels, which the Dockerfile's `python -m venv` needs.
base_packages=python3,python3-venv,ca-certificates

log() { printf '[build-images] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }
is_root() { [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; }
# shellcheck source=hack/lib/rootfs.sh
source "$repository/hack/lib/rootfs.sh"

apt_install() {
    is_root || fail "missing $*: install it (Debian/Ubuntu: sudo apt-get install $*)"
    log "installing $*"
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "$@" >&2
}

version="$(awk -F'"' '/^\[project\]/ { in_project = 1 } in_project && $1 ~ /^version *= */ { print $2; exit }' "$repository/pyproject.toml")"
[[ -n "$version" ]] || fail "pyproject.toml has no [project] version"
default_base="$(sed -n 's/^ARG PYTHON_BASE=//p' "$dockerfile")"
[[ -n "$default_base" ]] || fail "$dockerfile has no ARG PYTHON_BASE=<image> default"

docker_answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }
engine="${TARS_IMAGE_ENGINE:-}"
if [[ -z "$engine" ]]; then
    if docker_answers; then
        engine=docker
    elif command -v podman >/dev/null || ! command -v buildah >/dev/null; then
        engine=podman
    else
        engine=buildah
    fi
fi
case "$engine" in
    docker) docker_answers || fail "TARS_IMAGE_ENGINE=docker, but no docker daemon answers" ;;
    podman | buildah)
        missing=()
        command -v "$engine" >/dev/null || missing+=("$engine")
        command -v runc >/dev/null || missing+=(runc)
        ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
        ;;
    *) fail "TARS_IMAGE_ENGINE=$engine: expected docker, podman or buildah" ;;
esac

mkdir -p "$images_dir"
exec 9>"$images_dir/.build.lock"
flock 9

# A limit is at most this shell's; podman itself caps the process limit at pid_max.
limit() {
    local value="$1" cap="${2:-}"
    [[ "$value" == unlimited ]] && value="${cap:--1}"
    [[ -n "$cap" ]] && ((value > cap)) && value="$cap"
    printf '%s' "$value"
}
pid_max="$(cat /proc/sys/kernel/pid_max)"
ulimits=(
    "nofile=$(limit "$(ulimit -Sn)"):$(limit "$(ulimit -Hn)")"
    "nproc=$(limit "$(ulimit -Su)" "$pid_max"):$(limit "$(ulimit -Hu)" "$pid_max")"
)
containers_conf="$images_dir/containers.conf"
cat >"$containers_conf.new" <<EOF
# Written by hack/build-images.sh for podman and buildah on this machine (CONTAINERS_CONF).
[containers]
default_ulimits = ["${ulimits[0]}", "${ulimits[1]}"]

[engine]
runtime = "runc"
EOF
mv "$containers_conf.new" "$containers_conf"
export CONTAINERS_CONF="$containers_conf"

has_image() {
    case "$engine" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

python_symlink() { ln -s /usr/bin/python3 "$1/usr/local/bin/python"; }

# The local base, from its tarball (made once with debootstrap).
local_base() {
    local recipe digest name tarball
    recipe="debootstrap minbase $debian_suite $base_packages python-symlink"
    digest="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
    name="localhost/tars-base-python:$debian_suite-$digest"
    tarball="$images_dir/tars-base-python-$debian_suite-$digest.tar"
    if has_image "$name"; then
        printf '%s' "$name"
        return
    fi
    [[ -f "$tarball" ]] || is_root || fail "debootstrap needs root to make the local base; or set TARS_IMAGE_BASE to an image"
    rootfs_tarball "$tarball" "$debian_suite" "$debian_mirror" "$base_packages" python_symlink
    log "importing $name"
    local path_env="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    case "$engine" in
        docker | podman)
            "$engine" import --change "ENV $path_env" --change "ENV LANG=C.UTF-8" \
                --change 'CMD ["python3"]' "$tarball" "$name" >/dev/null
            ;;
        buildah)
            local container
            container="$(buildah from scratch)"
            buildah add "$container" "$tarball" / >/dev/null
            buildah config --env "$path_env" --env LANG=C.UTF-8 --cmd python3 "$container"
            buildah commit --quiet "$container" "$name" >/dev/null
            buildah rm "$container" >/dev/null
            ;;
    esac
    printf '%s' "$name"
}

pull_default_base() {
    has_image "$default_base" && return 0
    log "pulling $default_base (at most ${pull_timeout}s)"
    timeout "$pull_timeout" "$engine" pull "$default_base" >&2
}

# The machine's pip settings, in the order pip reads them (environment over config files).
pip_config="$(python3 -m pip config list 2>/dev/null || true)"
pip_setting() {
    local variable="$1" key="$2"
    if [[ -n "${!variable:-}" ]]; then
        printf '%s' "${!variable}"
    else
        sed -n "s/^[a-z:.]*\.$key='\(.*\)'\$/\1/p" <<<"$pip_config" | tail -n 1
    fi
}
build_args=()
for setting in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_TRUSTED_HOST:trusted-host; do
    value="$(pip_setting "${setting%%:*}" "${setting#*:}")"
    [[ -z "$value" ]] || build_args+=(--build-arg "${setting%%:*}=$value")
done
ca_bundle="$(pip_setting PIP_CERT cert)"
ca_bundle="${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}"
[[ ! -f "$ca_bundle" ]] || build_args+=(--secret "id=ca-bundle,src=$ca_bundle")

# buildah's builds (podman's too) read the runtime but not the ulimits from containers.conf.
# Their OCI images leave out the HEALTHCHECKs (buildah warns): in the docker format podman
# would schedule them with systemd timers and log an error on every run where systemd is
# not running, and Kubernetes uses the chart's probes instead.
case "$engine" in
    docker) build=(docker build) ;;
    *) build=("$engine" build --layers --runtime runc --ulimit "${ulimits[0]}" --ulimit "${ulimits[1]}") ;;
esac
# Names as the engine lists them: podman and buildah qualify local tags with localhost/.
qualified() { [[ "$engine" == docker ]] && printf '%s' "$1" || printf 'localhost/%s' "$1"; }
declare -A tags=([replica]="tars-replica:$version" [operator]="tars-operator:$version")

# What the images are made of: the build context (the files .dockerignore lets in), the
# Dockerfile, this script, and every choice above. With the same stamp and both images present, the
# engine's layer cache would only rebuild the same images, which still takes a while.
context_digest() {
    local kept
    mapfile -t kept < <(sed -n 's|^!\(.*\)|\1|p' "$repository/.dockerignore")
    (cd "$repository" && find "${kept[@]%/}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
stamp="$(
    printf '%s\n' "engine $engine" "base $base_choice" "${build[@]}" "${build_args[@]}"
    cat "$dockerfile" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
    context_digest
)"
stamp_file="$images_dir/images.stamp"
if [[ "$(cat "$stamp_file" 2>/dev/null)" == "$stamp" ]] &&
    has_image "$(qualified "${tags[replica]}")" && has_image "$(qualified "${tags[operator]}")"; then
    printf '%s\n' "$images_dir"
    exit 0
fi

case "$base_choice" in
    auto) if pull_default_base; then base="$default_base"; else
        log "no registry answers with $default_base: building on a local base"
        base="$(local_base)"
    fi ;;
    local) base="$(local_base)" ;;
    *) base="$base_choice" ;;
esac

build_args+=(--build-arg "PYTHON_BASE=$base")

started=$SECONDS
for target in replica operator; do
    log "building ${tags[$target]} (target $target, base $base, $engine)"
    "${build[@]}" --network host "${build_args[@]}" --file "$dockerfile" \
        --target "$target" --tag "${tags[$target]}" "$repository" >&2
done
log "built both images in $((SECONDS - started))s"
[[ "$engine" == docker ]] || log "run them with CONTAINERS_CONF=$containers_conf (runc, this machine's ulimits)"
cat >"$images_dir/images.json.new" <<EOF
{
  "engine": "$engine",
  "containers_conf": "$containers_conf",
  "base": "$base",
  "version": "$version",
  "replica": "$(qualified "${tags[replica]}")",
  "operator": "$(qualified "${tags[operator]}")"
}
EOF
mv "$images_dir/images.json.new" "$images_dir/images.json"
printf '%s\n' "$stamp" >"$stamp_file"
printf '%s\n' "$images_dir"
