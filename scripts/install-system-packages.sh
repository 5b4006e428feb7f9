#!/usr/bin/env bash
# Installs the Debian packages pft-lab uses when they are missing:
#   dataset-fashion-mnist (offline Fashion-MNIST), chromium + chromium-driver (browser tests),
#   faketime (libfaketime: the worker tests run a worker whose clock is skewed).
# --optional: never fail (used by `make up`: without root, datasets are downloaded on first use).
set -u
optional=0; [ "${1:-}" = "--optional" ] && optional=1
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
if [ "$optional" = 0 ]; then
  command -v chromium >/dev/null || want+=(chromium)
  command -v chromedriver >/dev/null || want+=(chromium-driver)
  command -v faketime >/dev/null || want+=(faketime)
fi
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "pft-lab: cannot install ${want[*]} (needs root and apt-get)" >&2
  [ "$optional" = 1 ] && exit 0 || exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq "${want[@]}" >/dev/null
