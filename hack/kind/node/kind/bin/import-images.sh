#!/bin/sh
# Imports the images under /kind/images into containerd's k8s.io namespace, as kind's node
# image builder does at build time (see 10-tars-images.conf).
set -eu
for archive in /kind/images/*.tar; do
    ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
        --no-unpack --digests "$archive" >/dev/null
done
