#!/usr/bin/env bash
# The engine's main job until the vhost-user transport lands: build it in release mode and measure
# the null backend over the in-process virtqueue (dpfs-bench core). Extra arguments go to the
# benchmark, e.g. `tools/run-core-bench.sh --json` or `--driver inline`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-dependencies.sh
swift build -c release --product dpfs-bench
exec .build/release/dpfs-bench core "$@"
