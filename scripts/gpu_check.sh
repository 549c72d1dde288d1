#!/usr/bin/env bash
# The one script to run on the GPU machine: what the machine is, the GPU tests, a short training run
# on the shipped Shakespeare corpus (the loss must fall), and the benchmark table (bench/gpu.py).
#
#   scripts/gpu_check.sh                 # all of it
#   scripts/gpu_check.sh tests train     # some stages: env tests more mpi check train readme bench
#                                        #   quickbench multigpu
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
    more)    # the GPU tests of generation, HellaSwag and the model (CPU parts run too)
        run more $PY -m pytest -q -rs tests/test_generate.py tests/test_hellaswag.py tests/test_model.py
        ;;
    mpi)     # 2 processes sharing this GPU (host-staged) against 1 process, ZeRO-0 and ZeRO-1
        run mpi $PY -m pytest -q -rs tests/test_distributed.py
        ;;
    check)   # llm.c's test_gpt2 on the GPU against a debug state made on the CPU in float64 (random d12)
        run check bash -c "$PY -c 'from llmnp import GPT2, GPT2Config; \
            GPT2(GPT2Config.preset(\"d12\"), seed=1).save_checkpoint(\"/tmp/d12.bin\")' && \
            $PY -m llmnp.check /tmp/d12.bin /tmp/d12_state.bin --write && \
            $PY -m llmnp.check /tmp/d12.bin /tmp/d12_state.bin --device cuda"
        ;;
    readme)  # the README's GPU run: d12 from scratch on the shipped corpus, its main.log kept for the plot
        run readme $PY train_gpt2.py --device cuda -e d12 -b 8 -t 1024 -x 120 -l 6e-4 -u 10 -q 0.1 -c 0.1 \
            -v 10 -m 4 -s 120 -g 48 -n 120 -o /tmp/shakespeare_d12_gpu
        cp /tmp/shakespeare_d12_gpu/main.log "$OUT/readme_main.log"
        ;;
    multigpu)  # the scaling table's code path; on one GPU, 2 processes share it (no scaling shown)
        run multigpu $PY bench/multigpu.py --nprocs 1 2 --batch 16 --steps 10
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
