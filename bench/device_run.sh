#!/usr/bin/env bash
# One device-tool call: install the project (and carried wheels) into /tmp/site, then run the
# named benchmarks, each writing its JSON and log under $OUT (bench/results/ copies are made here
# from what comes back). Usage: bash bench/device_run.sh STAGE...
# Stages: depth-online, train-7b, train-7b-auto, embed, seg, depth, fp8-14k, fp8-56k.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site \
  . plugins/* >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))")
echo "device: $gpu"
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    train-7b)
      python3 bench/train_recipe.py recipes/edge_hdvila.toml --nproc 1 --steps 6 \
        --set 'parallel.activation_checkpointing="full"' --out "$OUT" 2>&1 | tail -25 ;;
    train-7b-auto)
      mkdir -p "$OUT/auto"
      python3 bench/train_recipe.py recipes/edge_hdvila.toml --nproc 1 --steps "${STEPS:-6}" --keep \
        --set 'parallel.activation_checkpointing="auto"' --out "$OUT/auto" 2>&1 | tail -25
      grep -h "activation checkpointing" /tmp/ctrlpost-bench-*/*/*/*/logs/rank0.log 2>/dev/null | tail -2 ;;
    depth-online)
      step=$(python3 -c "import json,glob; print(json.load(open(sorted(glob.glob('$OUT/train-edge_hdvila-*.json'))[-1]))['median_step_s'])" 2>/dev/null || echo 16.4)
      python3 plugins/depth/bench/online_cost.py --device cuda --step-seconds "$step" \
        --out "$OUT/annotate_depth-online-$gpu.json" 2>&1 | tail -30 ;;
    depth)
      python3 plugins/depth/bench/annotate_speed.py --device cuda \
        --out "$OUT/annotate_depth-$gpu.json" 2>&1 | tail -40 ;;
    seg)
      python3 plugins/seg/bench/annotate_speed.py --device cuda \
        --out "$OUT/annotate_seg-$gpu.json" 2>&1 | tail -40 ;;
    fp8-14k|fp8-56k)
      tokens=$([ "$stage" = fp8-14k ] && echo 14080 || echo 56320)
      python3 bench/train_step.py --sizes "$tokens" --parts ceiling,base --repeats 3 \
        --deadline "${DEADLINE:-400}" --base-variants \
        "${VARIANTS:-ctrlpost/selective/compile/cudnn,ctrlpost/selective/compile/cudnn/fp8,diffusers/compile,diffusers}" \
        --out "$OUT/train_step-fp8-$tokens-$gpu.json" 2>&1 | tail -30 ;;
    embed)
      python3 bench/embed.py --networks "" --out "$OUT/embed-$gpu.json" 2>&1 | tail -40 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date +%T)"
