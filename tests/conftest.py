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
# Read-only material beside the repository, not shipped with it (FOCI's stored prediction files).
# FINEDEFICS_SHARED_DIR points elsewhere, e.g. at a missing folder to run the tests as a fresh clone would.
SHARED = Path(os.environ.get("FINEDEFICS_SHARED_DIR", REPO_ROOT.parent / "shared"))
FOCI_RESULTS = SHARED / "foci" / "results"
FOCI_RESULT_NAMES = ("bird-200-finedefics-release-run", "car-196-finedefics-release-run")

import pytest  # noqa: E402


def foci_result_file(name: str = "bird-200-finedefics-release-run") -> Path:
    """One of FOCI's stored prediction files; the calling test is skipped, saying why, when it is absent."""
    path = FOCI_RESULTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"FOCI's stored prediction file {path} is absent: it is not shipped with the repository "
                    "(set FINEDEFICS_SHARED_DIR to the folder holding foci/results)")
    return path

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


TOY_CATEGORIES = ["Velmoran Thistlewing", "Corvel Tit", "Ashcombe Reedhopper", "Mirel Finch"]
TOY_COLOURS = ["red", "green", "blue", "yellow"]


def toy_rows(n: int = 32):
    """Rows of the Finedefics training schema: one flat colour per category, siblings as negatives."""
    from PIL import Image

    rows = []
    for i in range(n):
        c = i % 4
        negatives = [(c + 1) % 4, (c + 2) % 4]
        rows.append({
            "image": Image.new("RGB", (64, 64), TOY_COLOURS[c]),
            "category": TOY_CATEGORIES[c],
            "attribute": f"a small bird with {TOY_COLOURS[c]} feathers",
            "neg_categories": [TOY_CATEGORIES[j] for j in negatives],
            "neg_attributes": [f"a small bird with {TOY_COLOURS[j]} feathers" for j in negatives],
            "example_id": i,
        })
    return rows


@pytest.fixture
def toy_dataset_dir(tmp_path):
    """A `save_to_disk` DatasetDict (train split) in the Finedefics training schema."""
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "toy-data"
    DatasetDict({"train": Dataset.from_list(toy_rows())}).save_to_disk(str(folder))
    return folder


@pytest.fixture
def micro_checkpoint(tmp_path):
    """A saved micro Finedefics checkpoint whose tokenizer knows the toy vocabulary."""
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    corpus = TEST_CORPUS + TOY_CATEGORIES + [f"a small bird with {c} feathers" for c in TOY_COLOURS]
    processor = build_tiny_processor(build_tiny_tokenizer(corpus))
    model = build_tiny_model(processor, preset="micro", seed=0)
    folder = tmp_path / "micro-base"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


HUB_TOKEN = "hf_test_token"


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub on 127.0.0.1 (``fake_hub.FakeHub``); huggingface_hub pointed at it, online, no Xet, no token in
    the environment (tests pass ``HUB_TOKEN`` where one is needed)."""
    from fake_hub import FakeHub
    from huggingface_hub import constants

    with FakeHub(token=HUB_TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake
