#!/usr/bin/env bash
# One prepared GPU check: on a machine with an NVIDIA GPU, run a small sweep over every GPU engine
# (pytorch / torchscript on cuda, onnxruntime CUDA and TensorRT EPs, native TensorRT) with
# compression none, fp16 and int8-static at batch 1 and 8, and print the table. Target: < 8 minutes.
#
# On a machine without an NVIDIA GPU it says so in one line and exits 2. Otherwise it never stops at a
# missing piece: what cannot run (no tensorrt, no onnxruntime-gpu, ...) becomes `unsupported` rows whose
# reason says why, and the preflight below says it up front. It exits 1 when any row expected to be `ok` on
# an NVIDIA node (EXPECTED_OK below) is not, or when no results were written; 0 when all of them are ok.
#
#   scripts/gpu-check.sh                 # uses $PYTHON, else .venv/bin/python, else python3
#   FLEETBENCH_INSTALL=1 scripts/gpu-check.sh   # first: pip install -e '.[nvidia]' into that python
#   GPU_CHECK_BUDGET_S=420 (default)     # hard cap for the sweep; rows finished by then are still printed
#   scripts/gpu-check.sh --check-db R.duckdb   # only the expected-ok check, on an earlier results file
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
BIN=$(dirname "$(command -v "$PY" || echo "$PY")")
COORD="$PY -m fleetbench.coordinator.cli"
[[ -x $BIN/coordinator ]] && COORD=$BIN/coordinator
# Rows that must be `ok` on an NVIDIA node with the [nvidia] extra installed, at both batch sizes.
# Prints those that are not (a missing row counts); returns 1 if any, or if the database cannot be read.
check_expected() {
  local bad
  echo "== expected ok on an NVIDIA node, and not ok (missing rows count too)"
  bad=$($COORD query --db "$1" --format csv "WITH want AS (
      SELECT * FROM (VALUES ('pytorch','cuda','none'), ('pytorch','cuda','fp16'), ('torchscript','cuda','none'),
        ('torchscript','cuda','fp16'), ('onnxruntime','cuda','none'), ('onnxruntime','cuda','fp16'),
        ('onnxruntime','tensorrt-ep','none'), ('onnxruntime','tensorrt-ep','fp16'),
        ('onnxruntime','tensorrt-ep','int8-static'), ('tensorrt','cuda','none'), ('tensorrt','cuda','fp16'),
        ('tensorrt','cuda','int8-static')) AS w(backend, device, compression),
        (VALUES (1), (8)) AS b(batch_size))
    SELECT w.backend, w.device, w.compression, w.batch_size, coalesce(r.status, 'missing') AS status,
      coalesce(r.error, '') AS error
    FROM want w LEFT JOIN results r USING (backend, device, compression, batch_size)
    WHERE r.status IS DISTINCT FROM 'ok' ORDER BY ALL" 2>&1) || { echo "$bad"; echo "!! cannot read $1"; return 1; }
  if [[ $(printf '%s\n' "$bad" | grep -c .) -gt 1 ]]; then   # the CSV header, then one line per row not ok
    echo "$bad"
    return 1
  fi
  echo "(none)"
}

if [[ ${1:-} == --check-db ]]; then   # only the check, on a results file written before
  check_expected "${2:?usage: scripts/gpu-check.sh --check-db results.duckdb}"
  exit $?
fi
BUDGET=${GPU_CHECK_BUDGET_S:-420}
OUT=${GPU_CHECK_DIR:-$(mktemp -d /tmp/fleetbench-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export FLEETBENCH_CACHE=${FLEETBENCH_CACHE:-$OUT/cache}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
start=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi $(command -v nvidia-smi >/dev/null 2>&1 && echo 'lists none' || echo 'not found'))"
  exit 2
fi
echo "== gpu-check: python $PY, output in $OUT"
nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv,noheader || true

if [[ ${FLEETBENCH_INSTALL:-0} == 1 ]]; then
  echo "== installing the [nvidia] extra (onnxruntime-gpu replaces the CPU onnxruntime wheel)"
  # onnxruntime and onnxruntime-gpu install the same module: keep only the GPU one.
  "$PY" -m pip uninstall -y onnxruntime >/dev/null 2>&1 || true
  "$PY" -m pip install -q -e "$ROOT[nvidia]" || echo "!! pip install of the [nvidia] extra failed; continuing with what is there"
fi

echo "== preflight (what this python can use)"
"$PY" - <<'EOF' || echo "!! preflight failed to run; the sweep below still reports per engine"
import importlib.util
def ver(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception as e:
        return f"unusable ({type(e).__name__}: {str(e)[:80]})"
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}: cuda available={cuda}" + (f", {torch.cuda.get_device_name(0)}" if cuda else ""))
except Exception as e:
    print(f"torch: unusable ({e})")
for mod, extra in (("tensorrt", "nvidia"), ("onnxruntime", "cpu/nvidia"), ("pynvml", "nvidia")):
    if importlib.util.find_spec(mod) is None:
        print(f"{mod}: NOT INSTALLED (pip install 'fleetbench[{extra}]')")
    else:
        print(f"{mod}: {ver(mod)}")
try:
    import onnxruntime as ort
    print("onnxruntime providers:", ", ".join(ort.get_available_providers()))
except Exception:
    pass
from fleetbench.agent.gpu import nvidia_gpus
gpus, driver, reason = nvidia_gpus()
print("NVML:", [f"{g['name']} cc{g['compute_capability']}" for g in gpus] or reason, "driver", driver)
from fleetbench.agent import backends
for name in ("pytorch", "torchscript", "onnxruntime", "tensorrt"):
    a = backends.get(name).probe()
    print(f"  {name:12s} {'devices ' + ','.join(a.devices) if a.available else 'UNAVAILABLE: ' + str(a.reason)}")
EOF

cat > "$OUT/gpu-sweep.yaml" <<EOF
# written by scripts/gpu-check.sh
name: gpu-check
models:
  - name: digits-test_resnet
    source: timm:test_resnet
    checkpoint: $ROOT/examples/digits/model.safetensors
    num_classes: 10
    input_size: [3, 32, 32]
dataset: {kind: digits, limit: 256}
compression: [none, fp16, int8-static]
backends: [pytorch, torchscript, onnxruntime, tensorrt]
devices: [cuda, tensorrt-ep]
batch_sizes: [1, 8]
targets: [all]
measure: {warmup_iters: 5, min_iters: 20, min_duration_s: 0.2, max_duration_s: 2}
timeout_s: 240
EOF

DB=$OUT/gpu-check.duckdb
echo "== sweep (cap ${BUDGET}s): $COORD run $OUT/gpu-sweep.yaml --db $DB"
timeout --signal=INT --kill-after=20 "$BUDGET" $COORD run "$OUT/gpu-sweep.yaml" --db "$DB" --no-progress
rc=$?
if [[ $rc -eq 124 || $rc -eq 130 ]]; then
  echo "!! the sweep hit the ${BUDGET}s cap: the rows below are the ones that finished"
elif [[ $rc -ne 0 ]]; then
  echo "!! coordinator run exited $rc"
fi

# tensorrt-ep is a device of onnxruntime only: other backends' rows on it say nothing.
ENGINE_PAIRS="NOT (device = 'tensorrt-ep' AND backend <> 'onnxruntime')"
if [[ -f $DB ]]; then
  echo "== results (every row: ok, failed with stage, unsupported with reason)"
  $COORD query --db "$DB" "SELECT backend, device, compression AS comp, dtype, batch_size AS bs, status,
      round(latency_p50_ms, 3) AS p50_ms, round(latency_device_p50_ms, 3) AS device_p50_ms, round(first_ms, 1) AS first_ms, round(build_s + coalesce(export_s, 0), 1) AS build_s,
      round(vram_peak_mb, 1) AS vram_mb, vram_source, round(f1_macro, 4) AS f1, round(top1_agreement, 4) AS agree,
      provider, coalesce(error, '') AS error
    FROM results WHERE $ENGINE_PAIRS ORDER BY status, backend, device, compression, bs" || true
  echo "== notes of GPU rows (device-resident time, ORT node placement, NVML VRAM)"
  $COORD query --db "$DB" "SELECT backend, device, compression AS comp, batch_size AS bs, notes
    FROM results WHERE status = 'ok' AND notes IS NOT NULL ORDER BY backend, device, comp, bs" || true
  echo "== what could not run"
  $COORD query --db "$DB" "SELECT status, stage, error, count(*) AS jobs FROM results
    WHERE status <> 'ok' AND $ENGINE_PAIRS GROUP BY ALL ORDER BY jobs DESC" || true
else
  echo "!! no results database was written"
  echo "== gpu-check FAILED in $(( $(date +%s) - start ))s: no results"
  exit 1
fi

if ! check_expected "$DB"; then
  echo "== gpu-check FAILED in $(( $(date +%s) - start ))s: rows expected ok are not (above)"
  exit 1
fi
echo "== gpu-check ok in $(( $(date +%s) - start ))s"
