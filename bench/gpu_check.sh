#!/usr/bin/env bash
# The prepared device check: GPU tests, then the GPU benchmarks, results under $OUT.
# Installs nothing from outside: only this repository itself, offline (its package maps
# models/ and kernels/ into the oscfast namespace, so it must be installed to import).
#
#   OUT=/tmp/gpu-out OSCFAST_DATA=/path/to/shared/data bash bench/gpu_check.sh [stage ...]
# stages: tests throughput precision paper paper-report (default: all, in that order)
# paper/paper-report write under bench/results/paper/full/ (bench/paper.py has no output
# option); after each, that folder is copied into the results as paper-full/ (without the
# per-iteration image snapshots, which the run does not keep here: --snapshot-every 0).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench/results/gpu-check}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/results"
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}
export OSCFAST_DATA=${OSCFAST_DATA:-$PWD/.shared_data}
LOG="$OUT/gpu_check.log"
stages=${*:-tests throughput precision paper paper-report}
PAPER=bench/results/paper/full

pack() { tar czf "$OUT/results.tgz" -C "$WORK" results 2>/dev/null; }
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
copy_paper() {
  [ -d "$PAPER" ] || { log "no $PAPER to copy"; return; }
  mkdir -p "$WORK/results/paper-full"
  tar cf - -C "$PAPER" --exclude=./snapshots . | tar xf - -C "$WORK/results/paper-full"
}

if ! python3 -c "import oscfast.models" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . >>"$LOG" 2>&1 \
    || python3 -m pip install -q --no-deps --no-index --no-build-isolation --target "$WORK/site" . >>"$LOG" 2>&1
  [ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import oscfast.models" 2>/dev/null; then
  # last resort without pip: a package folder of links with the same layout as the wheel
  mkdir -p "$WORK/shim/oscfast"
  ln -s "$PWD"/oscfast/* "$WORK/shim/oscfast/"
  ln -s "$PWD/models" "$WORK/shim/oscfast/models"; ln -s "$PWD/kernels" "$WORK/shim/oscfast/kernels"
  export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
  log "using the link shim"
fi
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import torch, numpy, numba, oscfast.models, oscfast.kernels
print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__, "numba", numba.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$WORK/results/gpu.txt" 2>&1

for stage in $stages; do
  log "stage $stage"
  case $stage in
    tests) python3 -m pytest -m gpu tests -q -p no:cacheprovider 2>&1 | tee "$WORK/results/gpu-tests.log" | tail -5 | tee -a "$LOG" ;;
    throughput) python3 bench/throughput.py --device cuda --sizes 256 512 --out-dir "$WORK/results" 2>&1 | tee -a "$LOG" ;;
    precision) python3 bench/precision_check.py --device cuda --size 256 --out-dir "$WORK/results" 2>&1 | tee -a "$LOG" ;;
    paper) python3 bench/paper.py run --scale full --device cuda --only f16,butterfly-x4,barbara --snapshot-every 0 --quiet 2>&1 \
             | tee -a "$LOG"; copy_paper ;;
    paper-report) python3 bench/paper.py report --scale full 2>&1 | tee -a "$LOG"; copy_paper ;;
    *) log "unknown stage $stage" ;;
  esac
  pack
done
log "done"
pack
