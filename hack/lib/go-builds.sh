# shellcheck shell=bash
# Shared by the scripts that build pinned Go programs from builder modules in hack/tools
# (build-tools.sh, build-node.sh); sourced, not run. The caller sets `tools_src` (the
# hack/tools directory) and defines `log`.

# The version a builder module pins for MODULE, read from its go.mod.
# shellcheck disable=SC2154 # tools_src: set by the script that sources this file
pinned_version() {
    local builder="$1" module="$2" version
    version="$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$tools_src/$builder/go.mod")"
    [[ -n "$version" ]] || { log "hack/tools/$builder/go.mod does not pin $module"; exit 1; }
    printf '%s' "$version"
}

# The git commit the module proxy recorded for MODULE's pinned version, when it has one.
module_commit() {
    local builder="$1" module="$2" info
    info="$(cd "$tools_src/$builder" && go mod download -json "$module" | sed -n 's/^\t"Info": "\(.*\)",$/\1/p')"
    sed -n 's/.*"Hash": *"\([0-9a-f]\{40\}\)".*/\1/p' "$info"
}

# The -X flags that give a Kubernetes binary its version, as a release build sets them.
kubernetes_version_ldflags() {
    local version="$1" commit="$2" build_date="$3" minor major package flags=""
    minor="${version#v*.}"
    minor="${minor%%.*}"
    major="${version#v}"
    major="${major%%.*}"
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $package.gitVersion=$version -X $package.gitMajor=$major"
        flags+=" -X $package.gitMinor=$minor -X $package.gitCommit=$commit"
        # "archive" is Kubernetes' own tree state for builds from a source archive.
        flags+=" -X $package.gitTreeState=archive -X $package.buildDate=$build_date"
    done
    printf '%s' "$flags"
}
