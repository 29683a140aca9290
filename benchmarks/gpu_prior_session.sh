#!/usr/bin/env bash
# One short GPU session for the DiffPIR demo prior alone: train configs/diffpir/demo_prior.yaml for a time budget,
# tune lambda/zeta (and, for inpainting, the step count) on T91 crops (neither training nor evaluation data), then
# run the DiffPIR rows of benchmarks/demo_vs_classical.py on every CBSD68 and McMaster image with the tuned options.
# Everything it writes goes to $OUT (at most 8 files). Usage, from the repository root:
#   DATA=path/to/bsd199 TUNE=path/to/t91 TESTSETS=dir OUT=dir [BUDGET=seconds] [RECORDS=baseline.jsonl] \
#     bash benchmarks/gpu_prior_session.sh
# CONFIG (another prior config), TUNE_N (tuning crops, 16), LIMIT (first N images of each set) make a quick
# dry run on a CPU possible. RECORDS: a records file holding the classical baselines already (copied, then the DiffPIR rows are added to it).
# Needs torch, safetensors, pyyaml, scipy, scikit-image, pillow, accelerate (no install: runs from PYTHONPATH).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEV=${DEVICE:-cuda}
BUDGET=${BUDGET:-280}
mkdir -p "$OUT"
W=$(mktemp -d)
L="$OUT/session.log"
log() { echo "[$(date +%T)] $*" | tee -a "$L"; }

log "machine"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
 python3 -c "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])") >> "$L" 2>&1

log "prior: budget ${BUDGET}s"
OMP_NUM_THREADS=8 timeout "$((BUDGET + 90))" python3 -c "
import sys
from restorekit.methods.diffpir.train import train_prior_from_config
info = train_prior_from_config(sys.argv[4], sys.argv[1], sys.argv[2],
                               time_budget=float(sys.argv[3]), time_limit=float(sys.argv[3]) + 45)
print({k: v for k, v in info.items() if k not in ('history',)})
" "$DATA" "$W/diffpir_demo_prior.safetensors" "$BUDGET" "${CONFIG:-configs/diffpir/demo_prior.yaml}" > "$OUT/prior.log" 2>&1
log "prior rc=$?"
cp "$W/diffpir_demo_prior.safetensors" "$OUT/"
tail -3 "$OUT/prior.log" >> "$L"

log "tune"
timeout "${TUNE_LIMIT:-100}" python3 benchmarks/demo_vs_classical.py --tune "$TUNE" --device "$DEV" --limit "${TUNE_N:-16}" \
  --diffpir-weights "$OUT/diffpir_demo_prior.safetensors" --tune-out "$OUT/tune.json" >> "$L" 2>&1
log "tune rc=$?"

[ -n "${RECORDS:-}" ] && cp "$RECORDS" "$OUT/records.jsonl"
log "bench"
timeout "${BENCH_LIMIT:-160}" python3 benchmarks/demo_vs_classical.py --methods diffpir --device "$DEV" \
  --testsets "$TESTSETS" --diffpir-weights "$OUT/diffpir_demo_prior.safetensors" --records "$OUT/records.jsonl" \
  --out "$OUT/demo_vs_classical.md" ${LIMIT:+--limit $LIMIT} $( [ -s "$OUT/tune.json" ] && echo --diffpir-options "$OUT/tune.json" ) \
  >> "$L" 2>&1
log "bench rc=$?"
ls -la "$OUT" >> "$L"
