"""Test setup: Triton's interpreter on CPU-only machines, and the `gpu` marker's skip."""

import os

import pytest
import torch

# Must be set before triton is imported anywhere: on a CPU machine Triton kernels then run in the
# interpreter (forced with backend="triton"); on a GPU machine they compile for the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
