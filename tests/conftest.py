"""Shared test set-up: everything offline, a private HF_HOME, tiny models built from configs."""

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub / transformers, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="finedefics-test-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

import pytest  # noqa: E402

TEST_CORPUS = [
    "a small bird with a red crown, a short conical beak and barred brown wings",
    "Velmoran Thistlewing", "Ashcombe Reedhopper", "Which of these birds is shown in the image?",
]


@pytest.fixture(scope="session")
def tiny_processor():
    """A FinedeficsProcessor with a BPE tokenizer trained offline on a few sentences, 64 px images."""
    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer

    return build_tiny_processor(build_tiny_tokenizer(TEST_CORPUS))


@pytest.fixture
def micro_model(tiny_processor):
    """A fresh ~1M-parameter Finedefics model (seeded), in eval mode."""
    from modeling_finedefics.tiny import build_tiny_model

    return build_tiny_model(tiny_processor, preset="micro", seed=0).eval()
