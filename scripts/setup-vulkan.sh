#!/usr/bin/env bash
# Makes sure a Vulkan driver is present so wgpu finds an adapter on a machine without a GPU.
#
# - A Vulkan loader plus at least one ICD (driver manifest) already present: do nothing.
# - Debian/Ubuntu without them: install Mesa's software Vulkan driver (lavapipe) and the loader,
#   `mesa-vulkan-drivers libvulkan1`, with sudo when not root.
# - Anything else: say what to install, and exit 0 so that macOS (Metal) and Windows (DX12),
#   which need no Vulkan driver at all, keep working.
set -euo pipefail

have_loader() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' && return 0
  for d in /usr/lib /usr/lib64 /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/local/lib; do
    [ -e "$d/libvulkan.so.1" ] && return 0
  done
  return 1
}

have_icd() {
  local dirs=(/usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d)
  [ -n "${VK_ICD_FILENAMES:-}" ] && return 0
  [ -n "${VK_DRIVER_FILES:-}" ] && return 0
  for d in "${dirs[@]}"; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  return 1
}

case "$(uname -s)" in
  Darwin) exit 0 ;;                     # wgpu uses Metal
  MINGW*|MSYS*|CYGWIN*) exit 0 ;;       # wgpu uses DX12 or the vendor's Vulkan driver
esac

if have_loader && have_icd; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "setup-vulkan: no Vulkan driver found and not root (and no sudo)." >&2
      echo "setup-vulkan: install them with: apt-get install mesa-vulkan-drivers libvulkan1" >&2
      exit 1
    fi
  fi
  echo "setup-vulkan: no Vulkan driver found; installing Mesa's software driver (lavapipe)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >&2
  echo "setup-vulkan: installed mesa-vulkan-drivers and libvulkan1." >&2
  exit 0
fi

cat >&2 <<'MSG'
setup-vulkan: no Vulkan driver was found and this is not a Debian/Ubuntu system.
Install your GPU vendor's Vulkan driver, or Mesa's software one (lavapipe):
  Fedora:  dnf install mesa-vulkan-drivers vulkan-loader
  Arch:    pacman -S vulkan-swrast vulkan-icd-loader
  Alpine:  apk add mesa-vulkan-swrast vulkan-loader
MSG
exit 0
