#!/usr/bin/env bash
# The GPU benchmark in one call, from the repository root with the package installed (pip install .):
# writes synthetic models of real shapes (random weights: Llama-3.1-8B in F16 and in Q4_K, SmolLM2-135M in
# F16) to DIR, then prints pp512 / tg128 with the roofline fraction for each, and the attention (4K-128K)
# and matvec kernels alone.
#   scripts/bench_gpu.sh [DIR] [REPETITIONS]     # DIR: a fresh temporary directory; REPETITIONS: 3
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d)}"
reps="${2:-3}"
mkdir -p "$dir"

models=()
for spec in llama-3.1-8b:F16 llama-3.1-8b:Q4_K smollm2-135m:F16; do
    path="$dir/${spec%%:*}-${spec##*:}.gguf"
    if [ ! -f "$path" ]; then
        python "$repo/tests/factory.py" "$path" --shape "${spec%%:*}" --type "${spec##*:}"
    fi
    models+=("$path")
done
python -m tca.tools.bench_cuda_model "${models[@]}" -r "$reps"
python -m tca.tools.bench_cuda
