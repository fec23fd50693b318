# Sourced by scripts/serve and scripts/test: installs Debian packages that are missing.
# Idempotent and quick when everything is present (one dpkg query, no apt-get update).

# Build prerequisites: nasm (OpenH264 is 2.8x slower without it), cmake (libopus,
# aws-lc), pkg-config, clang (bindgen).
HUITONG_BUILD_PKGS="nasm cmake pkg-config clang libclang-dev"
# Real peers and services the tests drive.
HUITONG_TEST_PKGS="chromium chromium-driver postgresql redis-server ffmpeg sip-tester fonts-wqy-microhei iproute2 nftables"

huitong_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
