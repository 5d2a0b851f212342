#!/usr/bin/env bash
# The GPU check in one call, sized to end within 9 minutes, run from the repository root, results whatever fails.
#
#   bash tests/gpu_check.sh                                      # on a GPU machine (CUDA), sizes 1b,8b
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZES=tiny bash tests/gpu_check.sh   # the CPU rehearsal (make test runs it)
#
# Each step (the machine, lora101 doctor, a random-weight SmolLM2 of the real shape, lesson 5's code path on
# the device, lora101 bench finetune, lora101 bench scale one size/method at a time with 8B full fine-tuning
# last) runs in its own process with its own timeout and log, and a failing one is recorded before the next
# runs: tests/gpu/run.py does that and writes results.json, scale.jsonl, table.md, lesson5.json and
# steps.tar.gz into GPU_CHECK_OUT (default test-artifacts/gpu), copied after every step to GPU_CHECK_BUNDLE
# when set. A machine with no network needs one carried folder (GPU_CHECK_CARRY, default
# test-artifacts/gpu-carry, at most 64 MiB), made here beforehand with `python tests/gpu/run.py carry`:
# bitsandbytes, datasets, dill and multiprocess wheels, and the bundled model's tokenizer and config.
#
# No `set -e` or `set -o pipefail`: one failing step must not end the script (run.py records it).
PY="${PY:-python3}"
OUT_DIR="${GPU_CHECK_OUT:-test-artifacts/gpu}"
CARRY="${GPU_CHECK_CARRY:-test-artifacts/gpu-carry}"
SITE="${GPU_CHECK_SITE:-/tmp/lora101-gpu-site}"
mkdir -p "$OUT_DIR/steps"
rm -f "$OUT_DIR/steps/00_install.txt"
if [ -d "$CARRY/wheels" ]; then
  "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl >"$OUT_DIR/steps/00_install.txt" 2>&1
  export GPU_CHECK_INSTALL_RC=$?
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lora101 from this checkout, installed or not
exec "$PY" tests/gpu/run.py "$@"
