#!/usr/bin/env bash
# The test suite on a fresh machine: install libtorch (once), build, run every test (CPU only;
# GPU tests skip themselves when no CUDA device is visible).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --release "$@"
