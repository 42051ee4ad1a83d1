#!/usr/bin/env bash
# One device-tool call: install the project (and carried wheels) into /tmp/site, then run the
# named benchmarks, each writing its JSON and log under $OUT (bench/results/ copies are made here
# from what comes back). Usage: bash bench/device_run.sh STAGE...
# Stages: encode, encode-kernels, fp8-attn, fp8-quantize, gpu-tests, depth-online, train-7b, train-7b-auto, real, real-fp8, real-fp8attn, pretrain-tiny, tiny-demo, embed, seg, depth, fp8-14k, fp8-56k.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
# A second invocation in the same call (other env per stage) skips an install of the same tree.
stamp=$(find src plugins pyproject.toml -type f \( -name '*.py' -o -name '*.toml' \) -print0 \
  | sort -z | xargs -0 cat | md5sum | cut -d' ' -f1)
if [ "$(cat /tmp/site/.stamp 2>/dev/null)" != "$stamp" ]; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  fi
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site \
    . plugins/* >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
  echo "$stamp" >/tmp/site/.stamp
fi
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))")
echo "device: $gpu"
# The GPU's clocks, power and temperature every second of the call: a matmul rate measured on a
# cool GPU says nothing of one that slows under a sustained load (bench/NOTES.md, 2026-12-07).
clocks="$OUT/gpu-clocks-$(date +%H%M%S).csv"
if command -v nvidia-smi >/dev/null; then
  fields=timestamp,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_event_reasons.active
  nvidia-smi --query-gpu="$fields" --format=csv,noheader >/dev/null 2>&1 \
    || fields=timestamp,clocks.sm,clocks.max.sm,power.draw,temperature.gpu
  nvidia-smi --query-gpu="$fields" --format=csv -l 1 >"$clocks" 2>/dev/null &
  sampler=$!
  trap 'kill $sampler 2>/dev/null; python3 bench/gpu_clocks.py "$clocks"' EXIT
fi
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
    real|real-fp8|real-fp8attn)
      # the engine's real step (loader, tokenizer encodes, optimizer, EMA) under "auto" checkpointing
      extra=(); [ "$stage" = real-fp8 ] && extra=(--set 'model.base_precision="fp8"')
      [ "$stage" = real-fp8attn ] && extra=(--set 'model.base_precision="fp8-attention"')
      python3 -c "import tensorboard" 2>/dev/null || extra+=(--set logging.tensorboard=false)
      # One random-weight tokenizer for every real stage of this machine (~20 s each saved).
      tok=/tmp/ctrlpost-cv8x8x8
      [ -f "$tok/encoder.jit" ] || python3 bench/cosmos_tokenizer.py "$tok" --check | tail -1
      # shellcheck disable=SC2086  # REAL_ARGS: extra options, e.g. "--warmup 1 --steps 3"
      python3 bench/train_real.py recipes/edge_hdvila.toml --ac auto --tokenizer "$tok" \
        "${extra[@]}" ${REAL_ARGS:-} \
        --out "$OUT/train_real-$stage${TAG:+-$TAG}-$gpu.json" 2>&1 | tail -60 ;;
    pretrain-tiny)
      # the tiny base of the embedded default, pre-trained on the GPU (issue 25)
      mkdir -p "$OUT/tiny_base"
      python3 -m ctrlpost.engine.pretrain_tiny recipes/edge_tiny.toml --device cuda \
        --out "$OUT/tiny_base/base_model.pt" --work /tmp/pretrain_tiny --clips "${PT_CLIPS:-2048}" \
        --batch-size "${PT_BATCH:-128}" --steps 100000 --max-seconds "${PT_SECONDS:-240}" \
        --log-every-steps 250 2>&1 | tail -40 ;;
    tiny-demo)
      # post-training sweep of the embedded default on the base pretrain-tiny wrote (or $PT_BASE)
      bash bench/tiny_demo_sweep.sh "${PT_BASE:-$OUT/tiny_base/base_model.pt}" "$OUT/tiny_demo" ;;
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
      # shellcheck disable=SC2086  # STEP_ARGS: extra options, e.g. "--profile"
      python3 bench/train_step.py --sizes "$tokens" --parts ceiling,base --repeats 3 ${STEP_ARGS:-} \
        --deadline "${DEADLINE:-400}" --base-variants \
        "${VARIANTS:-ctrlpost/selective/compile/cudnn,ctrlpost/selective/compile/cudnn/fp8,diffusers/compile,diffusers}" \
        --out "$OUT/train_step-fp8-$tokens-$gpu.json" 2>&1 | tail -30 ;;
    fp8-attn)
      # FP8 self-attention kernels (cuDNN, nvidia-cudnn-frontend carried in .whl) against bf16
      python3 bench/fp8_attention.py --lengths "${LENGTHS:-56320,14080}" \
        --out "$OUT/fp8_attention-$gpu.json" 2>&1 | tail -30 ;;
    fp8-quantize)
      # the FP8 MLP's GELU quantization, as shipped and two cheaper ways (one compiled op each)
      # (TORCHINDUCTOR_MULTI_KERNEL=1 TAG=multikernel: inductor also tries persistent reductions)
      python3 bench/fp8_quantize.py --out "$OUT/fp8_quantize${TAG:+-$TAG}-$gpu.json" 2>&1 | tail -10 ;;
    gpu-tests)
      python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_fp8_attention.py \
        tests/models/test_fp8.py tests/engine/test_gpu.py 2>&1 | tail -30 ;;
    encode)
      # one tokenizer encode of a 121-frame 720p clip under cuDNN autotuning / channels-last
      # shellcheck disable=SC2086  # ENCODE_ARGS: e.g. "--settings default --profile --variants ..."
      python3 bench/tokenizer_encode.py ${ENCODE_ARGS:-} \
        --out "$OUT/tokenizer_encode${TAG:+-$TAG}-$gpu.json" 2>&1 | tail -60 ;;
    encode-kernels)
      # the encode's heaviest operations alone, each several ways (layouts, attention forms)
      python3 bench/encode_kernels.py --out "$OUT/encode_kernels-$gpu.json" 2>&1 | tail -30 ;;
    embed)
      python3 bench/embed.py --networks "" --out "$OUT/embed-$gpu.json" 2>&1 | tail -40 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date +%T)"
