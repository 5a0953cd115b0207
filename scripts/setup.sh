#!/usr/bin/env bash
# Sets up a fresh machine for cnnjax: Debian's Fashion-MNIST package (the offline default data, where apt-get is
# available) and a virtual environment in .venv with cnnjax and its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt_install dataset-fashion-mnist || echo "setup: could not install Debian's dataset-fashion-mnist;" \
    "point --config.data.data_dir at the Fashion-MNIST files or go online so TFDS can download them" >&2
fi

# PostgreSQL server binaries: the sweep tests start a real server on loopback (Optuna's RDB storage)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql || echo "setup: could not install Debian's postgresql; the PostgreSQL sweep test will skip" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv && "$PYTHON" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
