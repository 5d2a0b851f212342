#!/usr/bin/env bash
# The GPU measurements, as one script for a lent GPU machine (about 8 minutes of an H200), run from the
# repository root. Writes its results under ${OUT:-test-artifacts/gpu}.
#
#   1. lesson 5's code path on CUDA: the training, save, reload (identical logits) and merge tests of
#      tests/test_gpu_path.py and tests/test_finetune.py, on the GPU (LORA101_TEST_DEVICE=cuda,
#      LORA101_DEVICE=cuda), under the GPU's own bf16 autocast;
#   2. lora101 bench scale: full fine-tuning, 16-bit LoRA and QLoRA peak memory (max_memory_allocated) and
#      tokens/s on Llama-shaped random-weight models of 1.24B and 8.03B parameters, batch 2 x 2048 tokens,
#      activation checkpointing on (the settings of torchtune's published RTX 4090 table).
#
# The machine has no network: bring bitsandbytes as a wheel (pip download bitsandbytes==0.50.2 --no-deps)
# and the prepared base model cache (~/.cache/lora101, about 270 MB in bf16 safetensors: over one transfer's
# 64 MiB, so in parts: `split -b 60M`, then `cat part* > file` here). Without the model cache step 1 is
# skipped and says so; step 2 needs nothing but torch, transformers, peft and bitsandbytes.
# Tested on a CPU with GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZES=tiny (no GPU was lent to the session that wrote it).
set -euo pipefail
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SIZES="${GPU_CHECK_SIZES:-1b,8b}"
OUT="${OUT:-test-artifacts/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
for wheel in bitsandbytes-*.whl; do
  [ -e "$wheel" ] && "$PY" -m pip install -q --no-deps "$wheel"
done
{
  echo "date: $(date -u +%FT%TZ)"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  "$PY" -c "from lora101.doctor import installed_versions; print(installed_versions())"
} | tee "$OUT/machine.txt"
if "$PY" -c "from lora101 import models; import sys; sys.exit(models.verify_cache(models.cache_dir()) is not None)"; then
  LORA101_TEST_DEVICE="$DEVICE" LORA101_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_gpu_path.py tests/test_finetune.py 2>&1 | tee "$OUT/lesson5_path.txt"
else
  echo "no prepared base model cache: step 1 (lesson 5's path on $DEVICE) skipped" | tee "$OUT/lesson5_path.txt"
fi
"$PY" -m lora101.cli bench scale --sizes "$SIZES" --batch-size 2 --seq-len "${GPU_CHECK_SEQ_LEN:-2048}" \
  --steps 3 --device "$DEVICE" --output "$OUT/scale_$DEVICE.json" --force 2>&1 | tee "$OUT/scale.txt"
