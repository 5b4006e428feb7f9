#!/usr/bin/env bash
# The GPU benchmark of issue 14, in one command and one process; JSON on stdout, progress on
# stderr. No downloads: random ViT-B/16 weights (pretrained=False) and random uint8 images
# written as an image folder in a temporary data folder. Measures, at batch 128 and 256: the
# plain eager bf16 timm loop; the engine's full fine-tuning eager and torch.compile'd; every
# manual strategy uncached (augmentation off); blocks_last_half and linear_probe on cached
# prefix tokens, blocks_last_half also compiled. Targets to report against: engine full eager
# >= 1.25x plain eager (`engine_vs_plain`); blocks_last_half cached and compiled >= 2.5x plain
# eager full (`strategies.blocks_last_half.cached_compiled_vs_plain`). Budget: under 6 minutes
# on one H100/H200 (estimated, not yet measured; the JSON's `seconds` says how long it took).
#
#   bash benchmarks/gpu.sh > gpu.json                   # on a machine with one CUDA GPU
#   PFT_BENCH_DRY_RUN=1 bash benchmarks/gpu.sh          # the same code path on CPU, tiny
#
# Environment: PYTHON (default .venv/bin/python, else python3), PFT_BENCH_STEPS (timed steps,
# default 10), PFT_BENCH_OUT (also write the JSON there).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STEPS=${PFT_BENCH_STEPS:-10}
WARMUP=3
STRATEGIES=full,linear_probe,attn_only,ffn_only,attn_first_half,attn_last_half,ffn_first_half
STRATEGIES+=,ffn_last_half,blocks_first_half,blocks_last_half
if [[ "${PFT_BENCH_DRY_RUN:-0}" == 1 ]]; then  # CPU, a fresh process per run: fewer runs
  SIZES=(8 16)
  STEPS=2
  WARMUP=1
  STRATEGIES=full,linear_probe,blocks_last_half
  ARGS=(--device cpu --model pft/vit-micro)
else
  SIZES=(128 256)
  ARGS=(--device cuda --model vit_base_patch16_224 --img-size 224 --compile)
fi
MAX=${SIZES[-1]}
# enough training images for the largest batch (the held-out split takes 10% of them)
IMAGES=$(((MAX * (STEPS + WARMUP) * 10 + 8) / 9 + 16))
OUT_ARGS=()
if [[ -n "${PFT_BENCH_OUT:-}" ]]; then OUT_ARGS=(--out "$PFT_BENCH_OUT"); fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/train_throughput.py "${ARGS[@]}" \
  --synthetic "$IMAGES" \
  --batch-sizes "$(IFS=,; echo "${SIZES[*]}")" \
  --steps "$STEPS" --warmup "$WARMUP" --repeats 1 \
  --strategies "$STRATEGIES" \
  --cached blocks_last_half,linear_probe \
  --compile-cached blocks_last_half \
  --json ${OUT_ARGS[@]+"${OUT_ARGS[@]}"}
