#!/usr/bin/env bash
# What the lent GPU machine lacks, gathered into .gpu_carry/ (ignored by git) to travel with the repository
# copy (the device tool's carry: [".gpu_carry"]): wheels for Python 3.12 / manylinux x86-64 of the packages its image
# lacks or has too old, and the Multi30k En-De files. Run here, where pip reaches PyPI:
#   bash scripts/prepare_gpu_carry.sh            (then, there: bash scripts/gpu_check.sh)
# The image has transformers 5.17, below our 5.24, and no datasets, dill or multiprocess;
# the versions are those this repository is tested with. PACKAGES="..." replaces the list, CORPUS the data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu_carry
corpus=${CORPUS:-../shared/data/multi30k}
packages=${PACKAGES:-"transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"}
limit_mb=60  # the tool carries 64 MiB with the working tree

rm -rf "$carry"
mkdir -p "$carry/wheels" "$carry/multi30k"
# shellcheck disable=SC2086  # one package per word
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest "$carry/wheels" $packages
for stem in train val test_2016_flickr; do
  for lang in en de; do
    cp "$corpus/$stem.$lang.gz" "$carry/multi30k/"
  done
done
ls -l "$carry/wheels" "$carry/multi30k"
size_mb=$(du -sm "$carry" | cut -f1)
tree_mb=$(git ls-files -z | du -cm --files0-from=- | tail -1 | cut -f1)
echo "$carry: $size_mb MiB; tracked files: $tree_mb MiB (the tool's limit: 64 MiB in all)"
if [ "$((size_mb + tree_mb))" -gt "$limit_mb" ]; then
  echo "too large to travel: $((size_mb + tree_mb)) MiB > $limit_mb MiB" >&2
  exit 1
fi
