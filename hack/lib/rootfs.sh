# shellcheck shell=bash
# A Debian root filesystem made once with debootstrap and kept as a tarball: the base of
# the images made here when no registry answers (build-images.sh, kind/build-kind.sh).
# Sourced, not run; the caller defines `log` and `fail`.

# rootfs_tarball TARBALL SUITE MIRROR PACKAGES [PREPARE]
# Makes TARBALL unless it exists. PREPARE, a function, gets the root directory before it
# is packed. debootstrap is installed when missing (it needs root, as the mounts do).
rootfs_tarball() {
    local tarball="$1" suite="$2" mirror="$3" packages="$4" prepare="${5:-}" root
    [[ -f "$tarball" ]] && return 0
    [[ "$(id -u)" == 0 ]] || fail "debootstrap needs root to make $(basename "$tarball")"
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || fail "missing debootstrap (Debian/Ubuntu: apt-get install debootstrap)"
        log "installing debootstrap"
        apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends debootstrap >&2
    fi
    root="$(mktemp -d "$(dirname "$tarball")/rootfs.XXXXXX")"
    # shellcheck disable=SC2064 # the directory is fixed now
    trap "rm -rf '$root'" EXIT
    log "making $(basename "$tarball") with debootstrap ($suite from $mirror); once"
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2
    [[ -z "$prepare" ]] || "$prepare" "$root"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar --numeric-owner -C "$root" -cf "$tarball.new" .
    mv "$tarball.new" "$tarball"
    rm -rf "$root"
    trap - EXIT
}
