"""The collator's content-keyed caches: batches tensor for tensor the same as the uncached path's (stage I and II,
Idefics2 and the other families, every image source), bounded memory, keys that follow content, unchanged errors."""

import io

import pytest
import torch
from conftest import TOY_CATEGORIES, TOY_COLOURS, toy_rows
from PIL import Image

from finedefics_training.collator import BoundedCache, FinedeficsDataCollator
from modeling_finedefics.families import FAMILIES

CORPUS = TOY_CATEGORIES + [f"a small bird with {colour} feathers" for colour in TOY_COLOURS] + [
    "What is the species of the bird in the image?", "Which of these birds is shown in the image?"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(tmp_path, n=12, sizes=((64, 64), (48, 40), (32, 56))):
    """Toy rows whose images come as a dataset cell with bytes, a cell with a path, a path and a PIL image (sizes
    differ, for the families whose token counts follow the size), plus a text-only instruction row."""
    rows = toy_rows(n)
    for i, row in enumerate(rows):
        image = row["image"].resize(sizes[i % len(sizes)])
        image.putpixel((i % 7, 3), (i * 19 % 255, 7, 200))  # every image its own content
        kind = i % 4
        if kind == 0:
            row["image"] = {"bytes": _png(image), "path": f"row-{i}.png"}
        elif kind in (1, 2):
            path = tmp_path / f"image-{i}.png"
            image.save(path)
            row["image"] = {"bytes": None, "path": str(path)} if kind == 1 else str(path)
        else:
            row["image"] = image
    rows.append({"image": None, "category": TOY_CATEGORIES[1], "question": "What does a Corvel Tit look like?",
                 "answer": "a small bird with green feathers", "example_id": n})
    return rows


def _batches(rows, size=4):
    """Overlapping batches that come back (so every cache both misses and hits), each a fresh copy of its rows as a
    data loader would give them."""
    order = list(range(len(rows))) + list(range(0, len(rows), 2)) + list(range(len(rows)))
    for start in range(0, len(order) - size + 1, size):
        yield [dict(rows[i]) for i in order[start:start + size]]


def _assert_same_batch(cached: dict, plain: dict) -> None:
    assert cached.keys() == plain.keys()
    for key, value in plain.items():
        assert cached[key].dtype == value.dtype, key
        assert torch.equal(cached[key], value), key


@pytest.mark.parametrize("family", ["idefics2", "qwen2_vl", "llava"])
@pytest.mark.parametrize("stage", [1, 2])
def test_cached_batches_equal_the_uncached_path_tensor_for_tensor(family, stage, tiny_processor, tmp_path):
    processor = tiny_processor if family == "idefics2" else FAMILIES[family].build_tiny(CORPUS)[1]
    rows = _rows(tmp_path)
    if stage == 1:
        rows = rows[:-1]  # stage I's contrastive terms need an image on every row
    kwargs = dict(stage=stage, num_negatives=2, closed_set_ratio=0.5, seed=3)
    cached = FinedeficsDataCollator(processor, cache=True, **kwargs)
    plain = FinedeficsDataCollator(processor, cache=False, **kwargs)
    count = 0
    for batch_rows in _batches(rows):
        _assert_same_batch(cached([dict(row) for row in batch_rows]), plain([dict(row) for row in batch_rows]))
        count += 1
    caches = cached._caches
    assert count >= 6 and caches.images.hits > 0 and caches.chat.hits > 0 and caches.tokens.hits > 0
    if stage == 1:
        assert caches.contrastive_rows.hits > 0
    assert plain._caches is None


def test_the_stage_two_choices_do_not_depend_on_the_cache(tiny_processor, tmp_path):
    """Open-set vs multiple choice and the option order are the same whether a row's prompt was cached or not."""
    rows = _rows(tmp_path)[:-1]
    cached = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=0.5, seed=1)
    plain = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=0.5, seed=1, cache=False)
    for _ in range(2):  # the second pass reads every prompt from the cache
        for row in rows:
            assert cached._conversation(dict(row), 0) == plain._conversation(dict(row), 0)
            _assert_same_batch(cached([dict(row)]), plain([dict(row)]))


def test_an_image_file_changed_at_the_same_path_is_decoded_afresh(tiny_processor, tmp_path):
    path = tmp_path / "bird.png"
    collator = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=0.0)
    plain = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=0.0, cache=False)
    row = toy_rows(1)[0]
    for colour in ("red", "blue", "red"):
        Image.new("RGB", (64, 64), colour).save(path)
        row["image"] = str(path)
        _assert_same_batch(collator([dict(row)]), plain([dict(row)]))
    assert len(collator._caches.images) == 2 and collator._caches.images.hits == 1


def test_bad_images_give_the_uncached_errors_and_are_not_cached(tiny_processor, tmp_path):
    collator = FinedeficsDataCollator(tiny_processor, stage=2)
    row = toy_rows(1)[0]
    row["image"] = {"bytes": b"not an image", "path": "broken.png"}
    for _ in range(2):
        with pytest.raises(ValueError, match="example 0: cannot read image file broken.png"):
            collator([dict(row)])
    row["image"] = str(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="example 0: image file not found: .*gone.png"):
        collator([dict(row)])
    assert len(collator._caches.images) == 0


def test_a_cached_image_is_a_copy_the_caller_may_change(tiny_processor):
    collator = FinedeficsDataCollator(tiny_processor, stage=2)
    row = toy_rows(1)[0]
    row["image"] = {"bytes": _png(Image.new("RGB", (64, 64), "red")), "path": None}
    first = dict(row)
    collator([first])
    first["image"].putpixel((0, 0), (0, 0, 0))
    second = dict(row)
    collator([second])
    assert second["image"].getpixel((0, 0)) == (255, 0, 0)


def test_bounded_cache_keeps_the_most_recent_values_within_its_limits():
    cache = BoundedCache(max_entries=3)
    for key in "abcd":
        cache.get_or_make(key, lambda key=key: key.upper())
    assert len(cache) == 3 and "a" not in cache
    cache.get_or_make("b", lambda: "never")  # a hit: "b" becomes the most recent
    cache.get_or_make("e", lambda: "E")
    assert "c" not in cache and "b" in cache and cache.get("b") == "B"
    sized = BoundedCache(max_entries=100, max_bytes=10, size=len)
    for key, value in (("x", "aaaa"), ("y", "bbbb"), ("z", "cccc")):
        sized.put(key, value)
    assert "x" not in sized and sized.bytes == 8
    assert sized.get_or_make("big", lambda: "b" * 11) == "b" * 11  # larger than the budget: returned, not kept
    assert "big" not in sized and sized.bytes == 8


def test_image_cache_is_bounded_in_decoded_bytes(tiny_processor, tmp_path, monkeypatch):
    from finedefics_training.collator import CollatorCaches

    monkeypatch.setattr(CollatorCaches, "IMAGE_BYTES", 2 * 64 * 64 * 3)
    collator = FinedeficsDataCollator(tiny_processor, stage=2)
    rows = _rows(tmp_path)[:-1]
    for row in rows:
        collator([dict(row)])
    images = collator._caches.images
    assert images.bytes <= 2 * 64 * 64 * 3 and 0 < len(images) < 9  # 9 of the rows' images are decoded files


@pytest.mark.parametrize("stage", [1, 2])
def test_demo_settings_train_the_same_losses_and_weights_as_the_former_ones(stage, micro_checkpoint, toy_dataset_dir,
                                                                           tmp_path):
    """The demo's phases now run without activation checkpointing and with the collator's caches: every step's loss
    and the trained weights are those of the former settings (checkpointing on, no caches), both under the bf16
    autocast the former demo ran (its variants now train in float32, which changes losses in the fourth decimal)."""
    from dataclasses import replace

    from finedefics_training.demo.plan import quick_plan
    from finedefics_training.demo.train import demo_model_arguments, demo_training_config
    from finedefics_training.recipe import DataArguments, load_model_and_processor, load_training_dataset
    from finedefics_training.trainer import FinedeficsTrainer

    plan = quick_plan()
    default = demo_training_config(tmp_path, plan, stage=stage, steps=4, learning_rate=1e-3, seed=0)
    assert default.activation_checkpointing is False and default.bf16 is False

    def train(former: bool):
        args = demo_training_config(tmp_path / f"out-{former}", plan, stage=stage, steps=4, learning_rate=1e-2, seed=0,
                                    batch_size=4, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                    object_noun="bird", bf16=True,
                                    **({"activation_checkpointing": True} if former else {}))
        data_args = DataArguments(dataset_dir=str(toy_dataset_dir))
        model, processor = load_model_and_processor(demo_model_arguments(micro_checkpoint, plan), args)
        trainer = FinedeficsTrainer(model=model, args=args, train_dataset=load_training_dataset(data_args),
                                    processing_class=processor)
        if former:
            trainer.data_collator = replace(trainer.data_collator, cache=False)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        return losses, {name: p.detach().clone() for name, p in model.named_parameters()}

    former_losses, former_weights = train(former=True)
    losses, weights = train(former=False)
    assert len(losses) == 4 and losses == former_losses
    assert weights.keys() == former_weights.keys()
    assert all(torch.equal(weights[name], former_weights[name]) for name in weights)
