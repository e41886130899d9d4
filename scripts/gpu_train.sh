#!/usr/bin/env bash
# The GPU recipe in one command, for a fresh device machine (one H200; see presets/gpu.toml).
#
#   here:   python scripts/export_tokens.py --out .tokens/stdlib-2048   (20.2 MiB, git-ignored)
#   device: run(command="bash scripts/gpu_train.sh", carry=[".tokens/stdlib-2048"], timeout_s=600)
#           with ".whl" in carry too (bash scripts/gpu_wheels.sh here first): the device image
#           has no transformer-lens
#   back:   $OUT/gpu/ holds config.json, tokenizer.json, training.json, metrics.jsonl, train.log
#           and model.safetensors, in 15 MiB parts when larger than the 16 MiB a returned file
#           may be: cat model.safetensors.part* > model.safetensors, then it loads with
#           SparseTransformer.from_pretrained. The optimizer state (~0.3 GB) stays there.
#
# Steps: (1) check CUDA, the token set and that sparse_lens imports (installing .whl/*.whl into
# /tmp/site first if that folder travelled); (2) calibrate: time CALIBRATE_STEPS steps of the
# preset, and lower --steps so the run fits BUDGET_MINUTES at the measured rate (never raise it;
# halve batch_size on out-of-memory); (3) train from the token set into $WORK/$RUN with the hard
# guard --max-minutes MAX_MINUTES (stops, evaluates and checkpoints in time: training.json then
# says finished: false, and --resume continues on the same machine); (4) print tokens/s, the
# held-out curve and copy what can come back into $OUT/$RUN.
#
# Settings (environment): TOKENS, PRESET, RUN, MAX_MINUTES, BUDGET_MINUTES, CALIBRATE_STEPS
# (0: no calibration), BATCH (default: the preset's), WORK, PYTHON, REQUIRE_CUDA (0 for a dry
# run on CPU with a CPU preset, as tests/test_token_set.py does). Arguments are passed on to
# `sparse-lens train`, e.g. `bash scripts/gpu_train.sh --set compile=true`.
set -uo pipefail

TOKENS=${TOKENS:-.tokens/stdlib-2048}
PRESET=${PRESET:-gpu}
RUN=${RUN:-gpu}
MAX_MINUTES=${MAX_MINUTES:-8}
BUDGET_MINUTES=${BUDGET_MINUTES:-7}
CALIBRATE_STEPS=${CALIBRATE_STEPS:-30}
WORK=${WORK:-/tmp/sparse-lens-gpu}
PYTHON=${PYTHON:-python3}
REQUIRE_CUDA=${REQUIRE_CUDA:-1}
OUT=${OUT:-$WORK/out}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SPARSE_LENS_CACHE="$WORK/cache"
started=$(date +%s)
say() { echo "gpu_train [$(($(date +%s) - started)) s]: $*"; }
die() { say "error: $*" >&2; exit 2; }

# ---------------------------------------------------------------- 1. checks
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || die "installing the carried wheels failed"
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
mkdir -p "$WORK" "$OUT/$RUN"
if [ "$REQUIRE_CUDA" != 0 ]; then
    "$PYTHON" - <<'EOF' || die "no usable CUDA device"
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
p = torch.cuda.get_device_properties(0)
print(f"gpu_train: torch {torch.__version__}, {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
fi
[ -f "$TOKENS/token_set.json" ] || die "no token set at $TOKENS (carry it; see the header)"
"$PYTHON" -c "import sparse_lens.model, sparse_lens.train.runner" 2>"$WORK/import.log" || {
    tail -n 1 "$WORK/import.log" >&2
    die "sparse_lens does not import here: carry the missing packages as wheels in .whl/"
}
rm -rf "${WORK:?}/calibrate" "${WORK:?}/$RUN"
BATCH=${BATCH:-$("$PYTHON" -c "from sparse_lens.train.config import load_preset as p; print(p('$PRESET').train.batch_size)")}
train() { "$PYTHON" -m sparse_lens train --preset "$PRESET" --tokens "$TOKENS" --no-progress \
    --set batch_size="$BATCH" "$@"; }

# ---------------------------------------------------------------- 2. calibration
STEPS_ARG=()
if [ "$CALIBRATE_STEPS" -gt 0 ]; then
    while :; do
        say "calibrating: $CALIBRATE_STEPS steps at batch_size $BATCH"
        if train --out "$WORK/calibrate" --steps "$CALIBRATE_STEPS" --set log_interval=10 \
            --set eval_interval=1000000 --set checkpoint_interval=1000000 "$@" \
            >"$WORK/calibrate.log" 2>&1; then
            break
        fi
        if grep -q "out of memory" "$WORK/calibrate.log" && [ "$BATCH" -gt 16 ]; then
            BATCH=$((BATCH / 2))
            rm -rf "${WORK:?}/calibrate"
            say "out of memory: halving batch_size to $BATCH"
            continue
        fi
        tail -n 20 "$WORK/calibrate.log"
        die "the calibration run failed"
    done
    STEPS=$("$PYTHON" - "$WORK/calibrate" "$BUDGET_MINUTES" "$PRESET" <<'EOF'
import json, sys
from sparse_lens.train.config import load_preset
run, minutes, preset = sys.argv[1], float(sys.argv[2]), sys.argv[3]
logs = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"tokens_per_s"' in l]
rate = logs[-1]["tokens_per_s"]  # the last window: past start-up and the first kernels
per_step = logs[-1]["tokens"] // logs[-1]["step"]
fit = int(rate * minutes * 60 / per_step)
print(f"gpu_train: calibration {rate:,.0f} tokens/s ({per_step:,} tokens/step): "
      f"{fit:,} steps fit in {minutes:g} min", file=sys.stderr)
print(min(fit, load_preset(preset).train.steps))
EOF
    ) || die "could not read the calibration's metrics"
    STEPS_ARG=(--steps "$STEPS")
fi

# ---------------------------------------------------------------- 3. the run
say "training $PRESET${STEPS_ARG[*]:+ with ${STEPS_ARG[*]}} into $WORK/$RUN (guard: $MAX_MINUTES min)"
train --out "$WORK/$RUN" "${STEPS_ARG[@]}" --max-minutes "$MAX_MINUTES" "$@" \
    >"$WORK/$RUN.log" 2>&1
rc=$?
tail -n 5 "$WORK/$RUN.log"

# ---------------------------------------------------------------- 4. report and return
"$PYTHON" - "$WORK/$RUN" <<'EOF'
import json, statistics, sys
run = sys.argv[1]
try:
    info = json.load(open(f"{run}/training.json"))
except OSError:
    sys.exit("gpu_train: no training.json: the run wrote no checkpoint")
logs = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
rates = [r["tokens_per_s"] for r in logs if "tokens_per_s" in r][1:]
held = [f"{r['step']}:{r['heldout_loss']:.3f}" for r in logs if "heldout_loss" in r]
print(f"gpu_train: {info['steps']}/{info['total_steps']} steps, finished {info['finished']}, "
      f"{info['tokens_seen']:,} tokens in {info['wall_time_s']:.0f} s = "
      f"{info['tokens_seen'] / max(info['wall_time_s'], 1e-9):,.0f} tokens/s overall, "
      f"median window {statistics.median(rates) if rates else 0:,.0f} tokens/s")
print(f"gpu_train: held-out loss {' '.join(held)}; train loss {info['final_train_loss']}")
print(f"gpu_train: nonzero fraction {json.dumps(info['nonzero_fraction'])[:300]}")
EOF
for name in config.json tokenizer.json training.json metrics.jsonl; do
    [ -f "$WORK/$RUN/$name" ] && cp "$WORK/$RUN/$name" "$OUT/$RUN/"
done
cat "$WORK/calibrate.log" "$WORK/$RUN.log" >"$OUT/$RUN/train.log" 2>/dev/null
model="$WORK/$RUN/model.safetensors"
if [ -f "$model" ]; then
    if [ "$(stat -c %s "$model")" -gt $((16 * 1024 * 1024)) ]; then
        split -b 15m -d -a 1 "$model" "$OUT/$RUN/model.safetensors.part"
    else
        cp "$model" "$OUT/$RUN/"
    fi
fi
say "returned: $(cd "$OUT/$RUN" && ls | tr '\n' ' ')(exit $rc)"
exit "$rc"
