#!/usr/bin/env bash
# Download (here, once) the pure-Python packages that `sparse-lens train` imports and the device
# image lacks, as wheels for its Python 3.12, into .whl/ (git-ignored); scripts/gpu_train.sh
# installs them there when .whl travels: run(..., carry=[".tokens/stdlib-2048", ".whl"]).
#
# The device image (/work/.library/device/KINDS.md) has torch, numpy, tokenizers, safetensors,
# jaxtyping, transformers, huggingface-hub, pandas, pyarrow, einops and tqdm, but not
# transformer-lens or what its import pulls in beyond those: datasets, dill, multiprocess.
# Versions are the ones sparse-lens is tested with here; about 2.4 MB in all.
set -euo pipefail
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -l .whl
