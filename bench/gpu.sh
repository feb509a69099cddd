#!/usr/bin/env bash
# One-GPU end-to-end benchmark (issue #5): synth 5,124 slices -> build -> 5-fold CV + final at
# out_size 256 with the default epochs; wall time of each step, training images/s, data-wait
# fraction and augmented batches/s on the device. Meant to finish well within 10 minutes on one GPU.
#
#   bash bench/gpu.sh                         # from the repo root
#   FILES=5124 EXTRA_SET="compile=true" bash bench/gpu.sh
#
# Needs .venv (made by `make install` when missing). Writes bench/gpu_results.json (and
# $OUT/gpu_results.json when OUT is set); `make bench` puts its figures into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
FILES=${FILES:-5124}                 # 427 patients x 12 slices (>= 5,123)
WORK=${WORK:-bench/work/gpu}
OUT_SIZE=${OUT_SIZE:-256}
EXTRA_SET=${EXTRA_SET:-}             # extra `--set` items for trainer cv, space separated
RESULTS=${RESULTS:-bench/gpu_results.json}
SIZE=${SIZE:-512}                    # synthetic slice side, pixels
REQUIRE_CUDA=${REQUIRE_CUDA:-1}      # 0: dry run on CPU (tiny FILES and EXTRA_SET epochs) to check the script

if [ ! -x "$PY" ]; then make install; fi
mkdir -p "$WORK"
DATA="$WORK/data_${FILES}_${SIZE}"
STORE="$WORK/store_${FILES}.zarr"
RUNS="$WORK/runs"
TIMES="$WORK/times.json"
if [ "$REQUIRE_CUDA" = 1 ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$2"; }

t0=$(now)
"$PY" -m bench.gpu synth "$DATA" --files "$FILES" --size "$SIZE"
t1=$(now)
rm -rf "$STORE"
"$PY" -m neurocache build --data-root "$DATA" --store "$STORE" --config configs/default.yaml
t2=$(now)
"$PY" -m bench.gpu pipeline "$STORE" --out-size "$OUT_SIZE" --out "$WORK/pipeline.json"
t3=$(now)
# the GPU machine is offline: random init (weights: none) unless the hub cache holds the ImageNet file
SETS=(--set "out_size=$OUT_SIZE" --set "weights=${WEIGHTS:-none}")
for s in $EXTRA_SET; do SETS+=(--set "$s"); done
rm -rf "$RUNS"
"$PY" -m trainer cv --store "$STORE" --config configs/default.yaml "${SETS[@]}" --out "$RUNS" --quiet
t4=$(now)
CV_RUN=$(ls -d "$RUNS"/run_*_cv* | sort | tail -n 1)
"$PY" -m trainer final --cv-run "$CV_RUN" --store "$STORE" --out "$RUNS" --quiet
t5=$(now)
FINAL_RUN=$(ls -d "$RUNS"/run_*_final* | sort | tail -n 1)

cat > "$TIMES" <<EOF
{"files": $FILES, "synth": $(elapsed "$t0" "$t1"), "build": $(elapsed "$t1" "$t2"),
 "device_pipeline": $(elapsed "$t2" "$t3"), "cv": $(elapsed "$t3" "$t4"), "final": $(elapsed "$t4" "$t5"),
 "total": $(elapsed "$t0" "$t5")}
EOF
OUTS=(--out "$RESULTS")
if [ -n "${OUT:-}" ]; then OUTS+=(--out "$OUT/gpu_results.json"); fi
"$PY" -m bench.gpu summary --times "$TIMES" --cv "$CV_RUN" --final "$FINAL_RUN" --pipeline "$WORK/pipeline.json" "${OUTS[@]}"
