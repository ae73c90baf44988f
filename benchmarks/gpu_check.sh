#!/usr/bin/env bash
# The GPU check: what to run first on a machine with one CUDA GPU, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--out DIR]      (default DIR: $OUT if set, else gpu-check)
#
# 1. the CUDA tests (the kernel test files, and every test whose name mentions cuda; they skip without one)
# 2. every kernel op at real sizes (n = 32, d = 10^6; BN [512, 256, 32x32]) against float64 references
# 3. the kernel benchmarks against the torch composites: achieved GB/s against the device's peak
# 4. the DSGD step, batched (vmap) against the per-client loop
# and writes DIR/gpu_check.json and DIR/gpu_check.md (the tables for benchmarks/RESULTS.md). Each phase has
# its own time limit (the sum stays under 8 minutes); a phase that runs out is recorded, the next one runs.
# Without a CUDA device it prints "no CUDA device" and exits 1, having run and written nothing.
set -u
cd "$(dirname "$0")/.."

out="${OUT:-gpu-check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (usage: bash benchmarks/gpu_check.sh [--out DIR])" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python}
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing checked" >&2
    exit 1
fi
mkdir -p "$out" || exit 1
phases="$out/phases.json"
echo "{}" > "$phases"
status=0

phase() {  # phase NAME SECONDS COMMAND...: run with a time limit, record rc and seconds in phases.json
    local name=$1 limit=$2; shift 2
    local start=$SECONDS rc
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@"
    rc=$?
    [ $rc -ne 0 ] && status=1
    "$python" - "$phases" "$name" "$rc" "$((SECONDS - start))" <<'EOF'
import json, sys
path, name, rc, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = json.load(open(path))
data[name] = {"rc": rc, "seconds": seconds, "timed_out": rc in (124, 137)}
json.dump(data, open(path, "w"), indent=2)
EOF
}

tests() {
    "$python" -m pytest -q -p no:cacheprovider tests/test_kernels_client_stats.py tests/test_kernels_mixing.py \
        tests/test_kernels_robust_aggregate.py tests/test_norm.py tests/test_bn_pass.py tests/test_attacks.py \
        -k "cuda or triton or kernel" -rs > "$out/tests.txt" 2>&1
    local rc=$?
    echo "$rc" > "$out/tests.rc"
    tail -n 3 "$out/tests.txt"
    return $rc
}

phase cuda_tests 150 tests
phase correctness 60 "$python" benchmarks/gpu_check.py correctness --out "$out" --device cuda --size real
phase kernel_benchmarks 180 "$python" -m pytest -q -p no:cacheprovider benchmarks/test_bench_kernels.py --benchmark \
    --benchmark-json="$out/bench_kernels.json"
phase dsgd_benchmark 60 "$python" -m pytest -q -p no:cacheprovider benchmarks/test_bench_dsgd.py --benchmark \
    -k cuda --benchmark-json="$out/bench_dsgd.json"
"$python" benchmarks/gpu_check.py report --out "$out" || status=1
exit $status
