"""TensorFlow settings that must be in the environment before it is imported.

oneDNN: TensorFlow runs its oneDNN kernels (convolutions, BatchNorm, the bfloat16 rewrite) only
on CPUs with AVX512_VNNI, AVX512_BF16 or AMX unless TF_ENABLE_ONEDNN_OPTS says otherwise; on an
AVX2 CPU without them it falls back to Eigen's, and EfficientNetV2 trains 1.21-1.36x slower
(docs/benchmarks.md, "Training speed"). The scripts turn it on
everywhere; TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off.
"""

import os


def set_defaults() -> None:
    """Sets what is not already set (the user's environment wins)."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
