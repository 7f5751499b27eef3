#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on a lent GPU machine but cannot fetch there (it has no network, and
# its image holds torch, Triton, CuPy and transformers but not diffusers, gensim or the CLIP vocabulary) into
# git-ignored folders that the run tool carries along with the checkout:
#   .whl/                        wheels for the device's Python 3.12: diffusers (the patched U-Net tests and
#                                the SD1.5 U-Net benchmark), open-clip-torch (CLIP's BPE vocabulary for
#                                text-to-image), gguf, importlib_metadata; with --with-gensim also gensim and
#                                smart_open (the word2vec benchmark's gensim side)
#   .device/cache/fashion-mnist  the Fashion-MNIST IDX files (the text-to-image training step)
#   .device/word2vec             the Debian word2vec corpus (xz, 21 MB; built by bench/build_word2vec_corpus.py
#                                when $W2V_CORPUS, default /tmp/w2v_corpus.txt, is missing) and the analogy,
#                                WS353 and SimLex files (the word2vec step's speed and quality on the GPU)
# Run from the repository root on this machine (it has PyPI and gensim's test data), then pass
# carry=[".whl", ".device"] to the run tool. Everything carried travels with the working tree, 64 MiB in all:
# gensim (28 MB) and Fashion-MNIST (30 MB) do not fit together, so --with-gensim leaves Fashion-MNIST out.
set -euo pipefail
cd "$(dirname "$0")/.."
with_gensim=0
[ "${1:-}" = "--with-gensim" ] && with_gensim=1
PY=${PYTHON:-python3}

wheels=(diffusers==0.42.1 importlib_metadata==10.2.0 open-clip-torch==3.3.0 gguf==0.19.0)
[ "$with_gensim" = 1 ] && wheels+=(gensim==4.4.0 smart_open==9.0.2)
rm -rf .whl
mkdir -p .whl
for wheel in "${wheels[@]}"; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$wheel"
done

rm -rf .device/cache/fashion-mnist
if [ "$with_gensim" = 0 ]; then
    src=$($PY -c "from genai_fast.diffusion.text2image.data import prepare_fashion_mnist as p; print(p())")
    mkdir -p .device/cache/fashion-mnist
    cp "$src"/*-idx?-ubyte* .device/cache/fashion-mnist/
fi

rm -rf .device/word2vec
mkdir -p .device/word2vec
corpus=${W2V_CORPUS:-/tmp/w2v_corpus.txt}
[ -f "$corpus" ] || $PY bench/build_word2vec_corpus.py --out "$corpus"
xz -T0 -6 -c "$corpus" > .device/word2vec/corpus.txt.xz
data=$($PY -c "import gensim, os; print(os.path.join(os.path.dirname(gensim.__file__), 'test', 'test_data'))")
cp "$data"/questions-words.txt "$data"/wordsim353.tsv "$data"/simlex999.txt .device/word2vec/

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -cb .whl .device 2>/dev/null | tail -1 | cut -f1)
total=$((tree + carried))
echo "carry: .whl $(du -sh .whl | cut -f1), .device $(du -sh .device 2>/dev/null | cut -f1 || echo 0); with the" \
     "working tree $((total / 1048576)) MiB of the 64 MiB limit"
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "over the carry limit: drop --with-gensim or some wheels" >&2
    exit 1
fi
