#!/usr/bin/env bash
# The prepared device check: one script, run once, early, by whoever next has a GPU.
#
#   OUT=/tmp/gpu-out bash bench/gpu_check.sh            # every stage, results under $OUT
#   bash bench/gpu_check.sh --dry-run                   # the stages and their estimates (any machine)
#   bash bench/gpu_check.sh tests throughput            # some stages only
#
# Runs from the repository root (wherever it is called from). Installs the project with its
# test extra over the machine's torch (pip install -e '.[test]' with torch pinned to the
# installed one, so pip never replaces it). Stops at the first stage that fails and exits
# non-zero; every stage writes its results under $OUT as soon as it ends (a log per stage,
# and $OUT/stages.tsv: stage, status, seconds, estimate). OSCFAST_DATA points at the paper's
# images (default: ./shared/data, then ../shared/data).
#
# The estimates are for one H100/H200 and add up to under 8 minutes; they are estimates
# (nothing in this version has run on a GPU yet): the seconds each stage took are in
# stages.tsv beside them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# stage name | estimated seconds on an H100/H200 | what it runs
STAGES=(
  "install|45|pip install -e '.[test]' over the installed torch; versions and the device"
  "tests|60|pytest -m gpu: restore, restore_many, the twin, cuda:N (with 2 devices), bf16 under vmap, export of a captured run, graph vs eager with reg-noise"
  "throughput|110|bench/throughput.py at 256 and 512 px, fp32 and bf16, no compile, restore_many K=1,2,4"
  "precision|80|bench/precision_check.py at 256 px, capped at 1200 iterations (3 images, fp32 and bf16)"
  "paper|150|bench/paper.py run --scale full --only f16,head-x4 --max-iterations 1500 (full-size images, capped: not the published counts), then its report"
)
TOTAL_LIMIT=480

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0
selected=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) selected+=("$arg") ;;
  esac
done

names=()
for entry in "${STAGES[@]}"; do names+=("${entry%%|*}"); done
if [ ${#selected[@]} -eq 0 ]; then selected=("${names[@]}"); fi
for stage in "${selected[@]}"; do
  if [[ " ${names[*]} " != *" $stage "* ]]; then echo "unknown stage $stage (stages: ${names[*]})" >&2; exit 2; fi
done

estimate_of() {
  local entry rest
  for entry in "${STAGES[@]}"; do
    if [ "${entry%%|*}" = "$1" ]; then rest=${entry#*|}; echo "${rest%%|*}"; fi
  done
}
what_of() {
  local entry
  for entry in "${STAGES[@]}"; do
    if [ "${entry%%|*}" = "$1" ]; then echo "${entry##*|}"; fi
  done
}

total=0
echo "device check: stages and their estimated seconds on one H100/H200"
for stage in "${selected[@]}"; do
  seconds=$(estimate_of "$stage")
  total=$((total + seconds))
  printf '  %-11s %4d s  %s\n' "$stage" "$seconds" "$(what_of "$stage")"
done
printf '  %-11s %4d s  (limit %d s)\n' "total" "$total" "$TOTAL_LIMIT"
if [ "$total" -gt "$TOTAL_LIMIT" ]; then
  echo "the selected stages are estimated over the limit" >&2
  exit 1
fi
if [ "$dry_run" -eq 1 ]; then exit 0; fi

OUT=${OUT:-$ROOT/bench/results/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}
if [ -z "${OSCFAST_DATA:-}" ]; then
  for candidate in "$ROOT/shared/data" "$ROOT/../shared/data"; do
    if [ -d "$candidate" ]; then OSCFAST_DATA=$candidate; break; fi
  done
fi
export OSCFAST_DATA=${OSCFAST_DATA:-$ROOT/shared/data}
PYTHON=${PYTHON:-python3}
printf 'stage\tstatus\tseconds\testimate\n' >"$OUT/stages.tsv"

stage_install() {
  local torch_version
  torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")
  # pin torch to the installed build so that pip keeps it (a CUDA wheel has a local version)
  echo "torch==$torch_version" >"$OUT/constraints.txt"
  # the device machine may have no network: when the resolver cannot reach an index, install the
  # project alone over what is there (its dependencies must then be installed already)
  if ! "$PYTHON" -m pip install --quiet --no-build-isolation --constraint "$OUT/constraints.txt" -e '.[test]'; then
    echo "pip could not install the dependencies (offline?): installing oscfast alone over the installed ones"
    "$PYTHON" -m pip install --quiet --no-build-isolation --no-deps -e . \
      || "$PYTHON" -m pip install --quiet --no-deps -e .
  fi
  "$PYTHON" - <<'PY'
import torch, numpy, numba, oscfast, oscfast.models, oscfast.kernels
print("oscfast", oscfast.__file__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__, "numba", numba.__version__)
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
assert torch.cuda.is_available(), "no CUDA device visible to torch"
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1 || true
}

stage_tests() {
  "$PYTHON" -m pytest -m gpu tests -q -p no:cacheprovider -rs --junitxml="$OUT/gpu-tests.xml"
}

stage_throughput() {
  "$PYTHON" bench/throughput.py --device cuda --sizes 256 512 --no-compile --batches 1 2 4 --out-dir "$OUT"
}

stage_precision() {
  "$PYTHON" bench/precision_check.py --device cuda --size 256 --max-iterations 1200 --out-dir "$OUT"
}

copy_paper_results() {
  # bench/paper.py writes under bench/results/paper/full/ (it has no output option): copied to
  # $OUT whether the stage finished or not, so that what ran comes back
  if [ -d bench/results/paper/full ]; then
    mkdir -p "$OUT/paper-full"
    tar cf - -C bench/results/paper/full --exclude=./snapshots --exclude=./partial . | tar xf - -C "$OUT/paper-full"
  fi
}

stage_paper() {
  trap copy_paper_results EXIT
  # full-size images, capped at 1500 iterations to fit the 8 minutes (the published counts are 3000 and 2000)
  "$PYTHON" bench/paper.py run --scale full --device cuda --only f16,head-x4 --max-iterations 1500 \
    --snapshot-every 0 --quiet
  "$PYTHON" bench/paper.py report --scale full
}

status=0
for stage in "${selected[@]}"; do
  estimate=$(estimate_of "$stage")
  echo "== $(date -u +%H:%M:%S) stage $stage (estimate ${estimate} s)"
  start=$(date +%s)
  set +e
  ( set -euo pipefail; "stage_$stage" ) >"$OUT/$stage.log" 2>&1
  code=$?
  set -e
  seconds=$(( $(date +%s) - start ))
  tail -n 5 "$OUT/$stage.log"
  if [ "$code" -eq 0 ]; then
    printf '%s\tok\t%d\t%d\n' "$stage" "$seconds" "$estimate" >>"$OUT/stages.tsv"
    echo "== stage $stage ok in ${seconds} s"
  else
    printf '%s\tfailed (%d)\t%d\t%d\n' "$stage" "$code" "$seconds" "$estimate" >>"$OUT/stages.tsv"
    echo "== stage $stage FAILED (exit $code) after ${seconds} s; its log: $OUT/$stage.log" >&2
    status=1
    break
  fi
done
exit "$status"
