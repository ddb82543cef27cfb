#!/usr/bin/env bash
# The default model's recipe on a GPU machine in one command (issue 31): unpacks the training sets
# carried as device_data/train.npz (scripts/gpu-data.py pack makes it here, from ../shared/data),
# fine-tunes the bundled default model on all nine sets for GPU_TRAIN_SECONDS (default 420) with
# the model card's recipe at a GPU's batch size, scores the best checkpoint on the validation
# images as the model card does, and returns under $OUT: metrics.csv, training_curves.png, evaluate.md (per set and kind),
# the best checkpoint without optimizer state in parts under 16 MiB (best.pt.part-aa, -ab: join
# with `cat best.pt.part-* > best.pt`), and gpu-train.log.
#
#   bash scripts/gpu-train.sh     # device_data/ copied with the checkout; DEVICE=cuda, OUT=./gpu-out unless set
#   DATA=other.npz DEVICE=cpu GPU_TRAIN_SECONDS=30 BATCH=2 SAMPLES=4 bash scripts/gpu-train.sh   # a dry run
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-out}
seconds=${GPU_TRAIN_SECONDS:-420}
device=${DEVICE:-cuda}
batch=${BATCH:-32}
samples=${SAMPLES:-16000}
workers=${WORKERS:-$(($(nproc) - 2))}
work=${WORK:-/tmp/gpu-train}
data=${DATA:-device_data/train.npz}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "$*" | tee -a "$OUT/gpu-train.log"; }

if ! "$python" -c "import unetseg._C" 2> /dev/null; then # not built yet on this machine (gpu-check builds it)
  "$python" -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || {
    tail -40 "$OUT/build.log"
    exit 1
  }
fi
rm -rf "$work"
"$python" scripts/gpu-data.py unpack "$data" "$work/data" | tee -a "$OUT/gpu-train.log" || exit 1
sets=("$work"/data/*)

# The model card's recipe (docs/model_card.md), from the bundled model; batch 32 at twice the
# learning rate, and epochs of `samples` crops so that validation runs every ~20 s. The weights
# are averaged (--ema: about the last 1000 steps, two such epochs): at this learning rate the last
# weights are noisy, and a best.pt picked from noisy validation losses is the luckiest of them
# (the bundled model's own pick was the low point of losses 0.665-0.691), not the best model.
start=$(date +%s)
timeout "$seconds" "$python" -m unetseg.cli train "${sets[@]}" -o "$work/run" --out-channels 2 --in-channels 3 \
  --model-options '{"base_width": 24, "depth": 4, "batch_norm": true}' --crop 192 --batch-size "$batch" \
  --epochs 1000 --patience 12 --workers "$workers" --seed 0 --lr 5e-4 --ema 0.999 --contact-width 2 --init-weights default \
  --augment-options '{"elastic": 3, "blur": 1.0, "channel_jitter": 0.1, "stain": 0.1}' --diameter 20 \
  --samples-per-epoch "$samples" --skip-invalid --precision auto --device "$device" > "$OUT/train.log" 2>&1
log "train: exit $? (124: stopped at GPU_TRAIN_SECONDS=$seconds) in $(($(date +%s) - start)) s"
cp "$work/run/metrics.csv" "$work/run/training_curves.png" "$OUT/" 2> /dev/null
[[ -f "$work/run/best.pt" ]] || {
  log "no checkpoint was written"
  exit 1
}
"$python" -c "import sys, torch; from unetseg.checkpoint import load_checkpoint, without_training_state as w; \
torch.save(w(load_checkpoint(sys.argv[1])), sys.argv[2])" "$work/run/best.pt" "$work/best.pt"
split -b 15M "$work/best.pt" "$OUT/best.pt.part-"
start=$(date +%s)
# exported with the shipped model's post-processing and scored through the runner as the model
# card's table is (docs/model_card.md: diameter "auto", precision "auto"), so the two compare
"$python" -m unetseg.cli export "$work/run/best.pt" -o "$work/model.pt" --threshold 0.6 --boundary-threshold 0.5 \
  --min-area 40 > "$work/export.log" 2>&1 || tail -5 "$work/export.log" | tee -a "$OUT/gpu-train.log"
timeout 150 "$python" -m unetseg.cli evaluate "$work/model.pt" "${sets[@]}" --skip-invalid --device "$device" \
  -o "$work/eval" > "$OUT/evaluate.md" 2> "$work/evaluate.err"
rc=$?
log "evaluate: exit $rc in $(($(date +%s) - start)) s"
[[ $rc -eq 0 ]] || tail -5 "$work/evaluate.err" | tee -a "$OUT/gpu-train.log"
cat "$OUT/evaluate.md"
