#!/usr/bin/env bash
# The one script to run on the GPU machine: what the machine is, the GPU tests, a short training run
# on the shipped Shakespeare corpus (the loss must fall), and the benchmark table (bench/gpu.py).
#
#   scripts/gpu_check.sh                 # all of it
#   scripts/gpu_check.sh tests train     # some stages: env tests train bench quickbench
#
# Logs go to $OUT (the device tool's output folder) or out/gpu_check; the summary prints last.
# The corpus must be tokenized already (dev/data/tinyshakespeare/*.bin, made by llmnp.data.default_corpus
# on a machine with the tokenizer) since the GPU machine may be offline.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
stages=${*:-env tests train bench}
summary=()

run() {   # run NAME CMD...: tee the output to $OUT/NAME.log, remember pass/fail and the time
    local name=$1; shift
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    summary+=("$name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s")
}

for stage in $stages; do
    case $stage in
    env)
        run env bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
            $PY -c 'import cupy, numpy, ml_dtypes; print(\"cupy\", cupy.__version__, \"numpy\", numpy.__version__, \
            \"ml_dtypes\", ml_dtypes.__version__, \"nvrtc\", cupy.cuda.nvrtc.getVersion()); \
            a = cupy.arange(4, dtype=numpy.float32).astype(\"bfloat16\"); a.fill(0); print(\"bf16 ok\", a.dtype)'"
        ;;
    tests)
        run tests $PY -m pytest -rsP tests/test_cuda.py   # setup.cfg adds -q
        ;;
    train)   # d12 from scratch on the shipped corpus, bf16, 60 steps: llm.c's step lines
        run train $PY train_gpt2.py --device cuda --dtype bf16 -e d12 -b 16 -t 1024 -x 60 -l 1e-3 -u 10 \
            -v 30 -m 4 -s 1000 -g 16
        grep -E "^step|val loss" "$OUT/train.log" | awk '/^step/ {print}' > "$OUT/train_steps.txt"
        ;;
    bench)
        run bench $PY bench/gpu.py --json "$OUT/bench.json"
        ;;
    quickbench)
        run bench $PY bench/gpu.py --impl llmnp --batch 4 64 --warmup 2 --steps 4 --json "$OUT/bench.json"
        ;;
    esac
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
[ -f "$OUT/tests.log" ] && tail -n 1 "$OUT/tests.log"
[ -f "$OUT/train.log" ] && grep -E "^step +(1|2|30|60)/|val loss" "$OUT/train.log" | head -8
[ -f "$OUT/bench.log" ] && sed -n '/^| impl/,$p' "$OUT/bench.log"
