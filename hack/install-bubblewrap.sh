#!/usr/bin/env bash
# Installs Debian's bubblewrap (bwrap), the sandbox every test run of TARS uses, when it is
# missing: with apt-get as root, as hack/build-ollama.sh installs its headers. Without root
# it says what to run; runs then go on unsandboxed (`--sandbox auto` says so in their status)
# and `--sandbox required` refuses them.
set -euo pipefail

if command -v bwrap >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "install-bubblewrap: installing bubblewrap" >&2
    apt-get update -qq >&2 && apt-get install -y -qq bubblewrap >&2
else
    echo "install-bubblewrap: bwrap is missing; install it (Debian/Ubuntu: sudo apt-get install bubblewrap)" >&2
fi
