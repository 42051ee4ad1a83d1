#!/usr/bin/env bash
# Post-training sweep of the embedded default on one GPU, on a given tiny base: how fast the
# control branch learns to follow its hint (validation edge F1 against floor and ceiling) for a
# few recipe settings. The quick start runs the same recipe on 2 CPU ranks of batch 1; here one
# rank of batch 2 stands in for them. Usage: bash bench/tiny_demo_sweep.sh BASE_MODEL_PT OUT_DIR
# Each variant is "name|--set KEY=VALUE ..." in $VARIANTS (one per line).
set -uo pipefail
base=$(realpath "$1"); out=$(realpath -m "$2"); repo=$PWD
mkdir -p "$out" && work=$(mktemp -d) && cd "$work" && cp -r "$repo/recipes" .
R=recipes/edge_tiny.toml
ctrlpost() { python3 -m ctrlpost "$@"; }  # pip --target installs no console scripts
ctrlpost fetch-weights $R >/dev/null && cp "$base" checkpoints/tiny/ctrlpost/tiny-dit/base_model.pt \
  && ctrlpost fetch-data $R >/dev/null && ctrlpost embed $R >/dev/null || exit 1
common=(--set parallel.nproc_per_node=1 --set parallel.backend=\"auto\" --set train.batch_size=2 --set checkpoint.every_steps=100000)
while IFS='|' read -r name sets; do
  [ -z "$name" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086  # $sets is a list of --set arguments
  ctrlpost train $R "${common[@]}" --set "job.name=\"$name\"" $sets >"$out/$name.log" 2>&1
  run=checkpoints/ctrlpost_demo/tiny/$name
  python3 - "$run/metrics.jsonl" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
val = [(r["step"], r["fidelity"]) for r in rows if "fidelity" in r]
floor, ceiling = val[0][1]["f1_noise"], val[0][1]["f1_reconstruction"]
print(f"{sys.argv[2]}: {sys.argv[3]} s  floor {floor:.3f} ceiling {ceiling:.3f}  f1 by step: "
      + " ".join(f"{s}:{f['f1']:.3f}" for s, f in val))
PY
  last=$(ls -d "$run"/validation/step_* | tail -1)
  mkdir -p "$out/$name" && cp "$last"/*.png "$run/metrics.jsonl" "$out/$name/"
done <<<"${VARIANTS:-lr1e-3|--set train.steps=300 --set validation.every_steps=100}"
