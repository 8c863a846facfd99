#!/usr/bin/env bash
# What the QEMU guest test needs, from Debian's packages: qemu-system-x86,
# busybox-static (the guests' userland), and Debian's cloud kernel with its
# virtio modules, unpacked (not installed) into DIR (default
# /var/tmp/tapwall-guest). Safe to run again: does only what is missing.
set -euo pipefail
dir=${1:-/var/tmp/tapwall-guest}
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
# busybox-static's binary is the one at /bin/busybox; the dynamic one would not run inside the guest.
if ! dpkg -s busybox-static >/dev/null 2>&1; then missing+=(busybox-static); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "guest-assets: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [ -f "$dir/vmlinuz" ] && [ -f "$dir/modules/virtio_net.ko" ]; then exit 0; fi
mkdir -p "$dir/modules"
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -nE 's/^ *Depends: (linux-image-[^ ]+)$/\1/p' | head -n 1)
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -nE 's/^ *Depends: (linux-image-[^ ]+)$/\1/p' | head -n 1)
fi
echo "guest-assets: unpacking $pkg into $dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && { apt-get download -qq "$pkg" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$pkg"; }; })
dpkg -x "$work"/linux-image-*.deb "$work/x"
cp "$work"/x/boot/vmlinuz-* "$dir/vmlinuz"
# virtio-net and what it needs, in the order the guest loads them.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  f=$(find "$work/x/lib/modules" -name "$m.ko*" | head -n 1)
  case "$f" in
    *.ko) cp "$f" "$dir/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$dir/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$f" > "$dir/modules/$m.ko" ;;
    *) echo "guest-assets: no module $m in $pkg" >&2; exit 1 ;;
  esac
done
echo "guest-assets: ready in $dir"
