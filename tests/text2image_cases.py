"""What the text-to-image test files share: the CLIP-vocabulary skip, a tiny model config on scikit-learn's
digits and short training options."""

from __future__ import annotations

import pytest

from genai_fast.diffusion.text2image.tokenizer import default_vocab_path
from genai_fast.diffusion.text2image.train import TrainOptions

try:
    default_vocab_path()
    HAVE_VOCAB = True
except FileNotFoundError:
    HAVE_VOCAB = False
needs_vocab = pytest.mark.skipif(not HAVE_VOCAB,
                                 reason="CLIP vocabulary missing: pip install --no-deps open-clip-torch")

TINY = dict(dataset="digits", image_size=8, sample_size=8, holdout="nine", block_out_channels=(8, 16, 16),
            norm_num_groups=4, attention_head_dim=4,
            text={"vocab_size": 49408, "max_length": 16, "width": 16, "layers": 1, "heads": 2, "final_norm": False})


def tiny_options(**kw) -> TrainOptions:
    """Four steps of 16 images, a checkpoint every 2 steps, no sample grids: override any field by keyword."""
    base = dict(steps=4, batch_size=16, lr=3e-3, warmup=1, checkpoint_every=2, sample_every=0,
                samples_per_class=1, progress=False)
    return TrainOptions(**{**base, **kw})
