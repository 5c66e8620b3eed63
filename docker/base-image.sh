#!/usr/bin/env bash
# Build a minimal Debian base image (Python 3.11, CA certificates) from Debian's own packages,
# for machines that reach a Debian mirror but no container registry. Tag it and pass it to the
# Dockerfiles as the base:
#   bash docker/base-image.sh localhost/loragate-base:bookworm
#   buildah bud --build-arg BASE=localhost/loragate-base:bookworm ...
# Needs root, debootstrap and buildah. Extra buildah options (e.g. --storage-driver vfs,
# --root DIR) come from BUILDAH_OPTS. About a minute and 150 MB.
set -euo pipefail

TAG="${1:-localhost/loragate-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates,tzdata"
read -r -a BUILDAH <<<"buildah ${BUILDAH_OPTS:-}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$work/log" \
  || { tail -n 30 "$work/log" >&2; exit 1; }
# What an image never needs: package lists and caches, documentation, logs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/var/log/* "$rootfs"/tmp/* 2>/dev/null || true
tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .

container="$("${BUILDAH[@]}" from scratch)"
"${BUILDAH[@]}" add "$container" "$work/rootfs.tar" / >/dev/null
"${BUILDAH[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd /bin/bash \
  --label org.opencontainers.image.description="Debian $SUITE minbase with python3" \
  "$container"
"${BUILDAH[@]}" commit --quiet --rm --format docker "$container" "$TAG" >/dev/null
echo "$TAG"
