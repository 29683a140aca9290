#!/usr/bin/env bash
# One GPU session: DiffPIR throughput (restorekit, and its UNet beside the official one), then training of the
# demo models (three DiffIR demos and a DiffPIR prior, at once), then their benchmark against classical baselines.
# Run once on an H200 with SCALE=0.72 (2026-11-26): it produced the bundled restorekit/data/diffir_demo_*.safetensors
# and benchmarks/results/throughput_gpu.md (its tune and benchmark steps ran out of time; the demo table was then
# computed on a CPU; its prior was not bundled). Usage, from the repository root:
#   DATA=path/to/bsd199 TUNE=path/to/t91 TESTSETS=dir OUT=results_dir OFFICIAL_DIFFPIR=path/to/DiffPIR [SCALE=1] \
#     bash benchmarks/gpu_demo_session.sh
# SCALE multiplies every time budget (0.02 for a quick CPU dry run). Needs torch, accelerate, safetensors, pyyaml,
# scipy, pillow (no install: the repository runs from PYTHONPATH).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEV=${DEVICE:-cuda}
SCALE=${SCALE:-1}
W=$(mktemp -d)
mkdir -p "$OUT"
t() { python3 -c "print(max(1, int($1 * $SCALE)))"; }
log() { echo "[$(date +%T)] $*"; }

log "machine"; (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; python3 -c \
  "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])") | tee "$W/machine.txt"

# 1. throughput on a quiet GPU (restorekit DiffPIR; random full-size FFHQ-layout UNet and the old demo prior)
log "throughput"
timeout "$(t 70)" python3 benchmarks/throughput.py --device "$DEV" --size 256 --steps 20 --images 8 \
  --precisions fp32 fp16 bf16 --budget "$(t 55)" --out "$W/throughput_gpu.md" > "$W/throughput.log" 2>&1
log "throughput rc=$?"
timeout "$(t 40)" python3 benchmarks/unet_vs_official.py --official "${OFFICIAL_DIFFPIR:-.rkdata/official_diffpir}" \
  --device "$DEV" --size 256 --out "$W/unet_vs_official.md" > "$W/unet_vs_official.log" 2>&1
log "unet_vs_official rc=$?"

# 2. training: three DiffIR demos (stage 1 then 2) in the background, the DiffPIR prior in the foreground
for task in sr deblur inpaint; do
  ( export OMP_NUM_THREADS=4
    timeout "$(t 285)" python3 - "$task" "$DATA" "$W" "$SCALE" <<'EOF' > "$W/diffir_$task.log" 2>&1
import json, sys
from restorekit.methods.diffir.train import load_config, train_diffir
task, data, w, scale = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
cfg = load_config(f"configs/diffir/demo_{task}.yaml")
s1 = f"{w}/diffir_demo_{task}_s1.safetensors"
i1 = train_diffir(cfg, 1, data=data, output=s1, time_limit=cfg["stage1"]["time_limit"] * scale)
i2 = train_diffir(cfg, 2, data=data, output=f"{w}/diffir_demo_{task}.safetensors", s1_weights=s1,
                  time_limit=cfg["stage2"]["time_limit"] * scale)
print(json.dumps({k: v for k, v in i2.items() if k not in ("history", "validation")}))
print("stage1 steps", i1["steps"], "stage2 steps", i2["steps"])
EOF
    echo "rc=$?" >> "$W/diffir_$task.log" ) &
done
log "prior"
OMP_NUM_THREADS=4 python3 -c "
import sys
from restorekit.methods.diffpir.train import train_prior_from_config
info = train_prior_from_config('configs/diffpir/demo_prior.yaml', sys.argv[1], sys.argv[2] + '/diffpir_demo_prior.safetensors',
                               time_budget=255 * float(sys.argv[3]), time_limit=265 * float(sys.argv[3]))
print(info)
" "$DATA" "$W" "$SCALE" > "$W/prior.log" 2>&1
log "prior rc=$?"
wait
log "diffir done"
mkdir -p "$W/bundled"
# bundled copies: float16 tensors, the same metadata
python3 - "$W" "$W/bundled" <<'EOF'
import sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
for name in ("diffpir_demo_prior", "diffir_demo_sr", "diffir_demo_deblur", "diffir_demo_inpaint"):
    src = Path(sys.argv[1]) / f"{name}.safetensors"
    if not src.exists():
        print("missing", src); continue
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(sd, str(Path(sys.argv[2]) / src.name), metadata=meta)
EOF

# 3. lambda/zeta grid on tuning images (T91: neither training nor evaluation data), then the benchmark
timeout "$(t 35)" python3 benchmarks/demo_vs_classical.py --tune "$TUNE" --device "$DEV" --limit 16 \
  --diffpir-weights "$W/bundled/diffpir_demo_prior.safetensors" --tune-out "$W/tune.json" > "$W/tune.log" 2>&1
log "tune rc=$?"
cp benchmarks/results/demo_vs_classical.jsonl "$W/records.jsonl" 2>/dev/null || true
timeout "$(t 100)" python3 benchmarks/demo_vs_classical.py --methods diffpir diffir --device "$DEV" \
  --testsets "${TESTSETS:-../shared/testsets}" \
  --diffpir-weights "$W/bundled/diffpir_demo_prior.safetensors" --diffir-dir "$W/bundled" --records "$W/records.jsonl" \
  --out "$W/demo_vs_classical.md" ${LIMIT:+--limit $LIMIT} $( [ -s "$W/tune.json" ] && echo --diffpir-options "$W/tune.json" ) > "$W/bench.log" 2>&1
log "bench rc=$?"

cp "$W"/bundled/*.safetensors "$OUT"/ 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$W" --exclude='*.safetensors' .
log "done"; ls -la "$OUT"
