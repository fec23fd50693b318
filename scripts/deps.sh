# Sourced by scripts/serve and scripts/test. Idempotent and quick when everything is
# present (one dpkg query per package, no apt-get update).

# Build prerequisites: nasm (OpenH264 is 2.8x slower without it), cmake (libopus,
# aws-lc), pkg-config, clang (bindgen).
HUITONG_BUILD_PKGS="nasm cmake pkg-config clang libclang-dev"
# What the tests drive: headless Chromium + ChromeDriver and Firefox ESR, PostgreSQL (the
# admin plane's tests run on SQLite and PostgreSQL), the CJK font the MCU draws names with,
# FFmpeg (its libavcodec is the MCU's H.264 decoder when installed: media::codec::libav) and
# libx264 (the MCU's optional encoder: media::codec::x264).
HUITONG_TEST_PKGS="chromium chromium-driver firefox-esr postgresql fonts-wqy-microhei ffmpeg libx264-164"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

huitong_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  as_root apt-get clean
}

# geckodriver (Firefox's WebDriver) is not packaged by Debian; crates.io has its source.
huitong_geckodriver() {
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver"
  [ -x "$bin" ] && return 0
  echo "building geckodriver from crates.io" >&2
  cargo install --locked --quiet geckodriver --version 0.37.1
}

# Starts the local PostgreSQL cluster and makes a role and database for the tests
# (CREATEDB only: each test creates and drops its own database).
huitong_postgres() {
  if ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
    as_root service postgresql start >/dev/null 2>&1 ||
      as_root pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  fi
  (cd /tmp &&
    { as_postgres psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='huitong'" | grep -q 1 ||
        as_postgres psql -qc "CREATE ROLE huitong LOGIN CREATEDB PASSWORD 'huitong'"; } &&
    { as_postgres psql -qtAc "SELECT 1 FROM pg_database WHERE datname='huitong'" | grep -q 1 ||
        as_postgres psql -qc "CREATE DATABASE huitong OWNER huitong"; })
  export HUITONG_TEST_POSTGRES_URL=postgres://huitong:huitong@127.0.0.1/huitong
  # A missing database now fails the PostgreSQL variants instead of skipping them.
  export HUITONG_REQUIRE_POSTGRES=1
}
