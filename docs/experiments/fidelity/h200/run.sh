#!/usr/bin/env bash
# fidelity (issue 11), second and last try. Code: branch `fidelity` at cdc4c44 or later (already merged).
# Two commands, caps 75 + 95 = 170 s. No --quiet: the logs show progress even if a cap is hit.
# Expected on one H200 (full float32 precision): each ~25-50 s start-up + compile, then
#   1. digits, LeNet, B = 8, labels read off the gradient, dummies ~ U(0, 1): 2 targets x 8 restarts x 6000
#      L-BFGS iterations (96k restart-iterations, lockstep: ~6000 steps of ~3 ms), ~45-65 s in all;
#   2. ResNet-20 (sigmoid, batch norm from the batch, He init, strides kept), colour, one image per gradient,
#      DLG: 1 target x 4 restarts x 1000 iterations, ~50-90 s in all (most of it compile).
set -u
export JAX_DEFAULT_MATMUL_PRECISION=highest
D="$OUT/fidelity2"; mkdir -p "$D"
timeout 75 python -m dlg_jax.cli experiment batch --datasets digits --batch-sizes 8 \
  --methods dlg-count-uniform --targets 2 --restarts 8 --iterations 6000 --tolerance 1e-10 --chunk-size 16 \
  --out "$D/batch-digits" > "$D/batch-digits.log" 2>&1; echo "batch-digits rc=$?" >> "$D/status.txt"
timeout 95 python -m dlg_jax.cli experiment compare --models resnet20-sigmoid-bn --methods dlg --datasets colour \
  --targets 1 --restarts 4 --iterations 1000 --chunk-size 4 \
  --out "$D/resnet" > "$D/resnet.log" 2>&1; echo "resnet rc=$?" >> "$D/status.txt"
