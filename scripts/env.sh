# Sourced by the project's scripts: installs libtorch 2.11.0 from PyPI into .libtorch/ (once,
# idempotently) and exports what tch needs to build and run against it.
# shellcheck shell=bash
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="$_root/.libtorch/venv"
_site="$_venv/lib/python3.11/site-packages"
if [ ! -f "$_root/.libtorch/ready-2.11.0" ]; then
  echo "simsiam: installing libtorch 2.11.0 (PyPI wheel, CPU runtime deps) into .libtorch/ ..." >&2
  python3 -m venv "$_venv" || return 1
  "$_venv/bin/pip" install -q --disable-pip-version-check --no-deps torch==2.11.0 || return 1
  # libtorch_cpu.so links libcudart.so.13 and libcupti.so.13 even on CPU-only machines.
  # (the versions torch 2.11.0's cuda-toolkit==13.0.2 pins; --no-deps keeps the GPU stack out)
  "$_venv/bin/pip" install -q --disable-pip-version-check --no-deps \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 || return 1
  touch "$_root/.libtorch/ready-2.11.0"
fi
if [ ! -f "$_root/.libtorch/ready-nccl-headers" ]; then
  # Headers for the NCCL helper (csrc/nccl.cpp, built by build.rs): NCCL's, and the CUDA
  # runtime's crt/ and CCCL parts, at the versions torch 2.11.0 / CUDA 13.0 pin.
  echo "simsiam: installing NCCL and CUDA headers (PyPI wheels) into .libtorch/ ..." >&2
  "$_venv/bin/pip" install -q --disable-pip-version-check --no-deps \
    nvidia-nccl-cu13==2.28.9 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 || return 1
  touch "$_root/.libtorch/ready-nccl-headers"
fi
_site="$("$_venv/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')"
export LIBTORCH="$_site/torch"
export LD_LIBRARY_PATH="$_site/torch/lib:$_site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _root _venv _site
