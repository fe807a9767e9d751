"""Wall time of one training step: stage II vs stage I (batched embeddings) vs stage I the reference's way.

    python benchmarks/bench_train_step.py --threads 2
    python benchmarks/bench_train_step.py --preset tiny --batch-size 16 --repeats 30 --threads 2 --output step.json

One run, one tiny model (random weights, CPU, float32) and one batch of ``--batch-size`` training
rows from a small synthetic benchmark generated into a temporary folder. Each variant gets its own
copy of the model and its own AdamW, so every variant starts from the same weights; a timed step is
``zero_grad`` + forward + loss + backward + ``optimizer.step()`` on the already-collated batch:

1. ``stage II``: the LM loss only;
2. ``stage I (batched)``: this project's way, ``model(..., contrastive_input_ids=...)``: the LM pass
   plus ONE extra decoder pass over every contrastive text of the step and the image summaries
   (which reuse the LM pass's resampled image features), then LM loss + ``FinedeficsContrastiveLoss``;
3. ``stage I (reference)``: the same losses with one decoder pass per text kind, as the reference
   code does: ``get_text_embeddings`` for the attribute descriptions, the negative descriptions, the
   category names and the negative names (each per row, not de-duplicated), and
   ``get_image_embeddings(pixel_values)``, which runs the vision tower again.

All three variants use the same LM inputs (the stage I collator's batch: "describe the attributes"
-> description), so the ratios measure the cost of the contrastive terms alone. The vision tower
is frozen, as in the recipe's default full tuning (``--train-vision-tower`` trains it).

Before timing, the first step of variants 2 and 3 (same weights) must give the same contrastive
loss (and LM loss) to 1e-4, or the script stops. Then ``--warmup`` untimed steps per variant, then
``--repeats`` rounds in which the three variants run round-robin (their order rotating each round)
so machine noise hits them alike. Reported: median and mean ms per step and the median's ratio to
stage II. Target: stage I <= 1.3x stage II.

``--profile`` adds a breakdown of one step per variant into its parts (LM forward, embedding
passes, losses, backward, optimizer), as medians over ``--repeats`` extra rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("stage II", "stage I (batched)", "stage I (reference)")
TARGET_RATIO = 1.3
CHECK_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- data
def build_batch(folder: Path, batch_size: int, seed: int):
    """A small synthetic benchmark in ``folder``, a tiny processor trained on its texts, and one batch of rows."""
    import random

    from finedefics_data.synth import SynthConfig, generate_benchmark, load_synthetic_dataset, text_corpus
    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer

    config = SynthConfig(num_genera=4, species_per_genus=4, train_per_category=4, rare_train_per_category=2,
                         test_per_category=1, seed=seed)
    data_dir = generate_benchmark(folder / "synth", config, progress=False)
    processor = build_tiny_processor(build_tiny_tokenizer(text_corpus(data_dir)))
    train = load_synthetic_dataset(data_dir)["train"]
    if batch_size > len(train):
        raise ValueError(f"--batch-size {batch_size} is larger than the benchmark's {len(train)} training rows")
    rows = random.Random(seed).sample(range(len(train)), batch_size)
    return processor, [train[row] for row in rows]


def reference_texts(examples: list[dict], num_negatives: int) -> dict:
    """Per text kind, the rows' texts (the reference embeds every row, duplicates included) and where they go."""
    kinds = {"attribute": [], "neg_attribute": [], "category": [], "neg_category": []}
    slots = {kind: [] for kind in kinds}  # flat (row * width + column) position of each text
    for row, example in enumerate(examples):
        if example.get("attribute"):
            kinds["attribute"].append(example["attribute"])
            slots["attribute"].append(row)
        kinds["category"].append(example["category"])
        slots["category"].append(row)
        for kind, field in (("neg_attribute", "neg_attributes"), ("neg_category", "neg_categories")):
            for column, text in enumerate(list(example.get(field) or [])[:num_negatives]):
                if text and text.strip():
                    kinds[kind].append(text)
                    slots[kind].append(row * num_negatives + column)
    return {kind: (texts, slots[kind]) for kind, texts in kinds.items() if texts}


# ----------------------------------------------------------------------------- steps
class Timer:
    """Accumulates wall time per named part (only when enabled)."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.parts: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        yield
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def module_timing(model, timer: Timer):
    """Forward time of the vision tower, the connector and each decoder call, as "of which" parts of the step."""
    calls = {"decoder": 0}
    starts = {}

    def pre(name):
        def hook(module, args, kwargs):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            part = name
            if name == "decoder":
                calls["decoder"] += 1
                part = "decoder, LM pass" if calls["decoder"] == 1 else "decoder, embedding pass(es)"
            part = f"of which fwd: {part}"
            timer.parts[part] = timer.parts.get(part, 0.0) + time.perf_counter() - starts[name]
        return hook

    modules = {"vision tower": model.model.vision_model, "connector": model.model.connector,
               "decoder": model.model.text_model}
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(module.register_forward_hook(post(name), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def lm_forward(model, lm_inputs: dict, timer: Timer, **extra):
    from finedefics_training.trainer import causal_lm_loss

    with timer("LM forward (+ batched embedding pass)" if extra else "LM forward"):
        outputs = model(**lm_inputs, use_cache=False, **extra)
    with timer("LM loss"):
        lm_loss, _ = causal_lm_loss(outputs.logits, lm_inputs["labels"])
    return outputs, lm_loss


def losses_stage_two(model, batch: dict, criterion, timer: Timer):
    _, lm_loss = lm_forward(model, batch["lm"], timer)
    return lm_loss, None


def losses_batched(model, batch: dict, criterion, timer: Timer):
    contrastive = batch["contrastive"]
    outputs, lm_loss = lm_forward(model, batch["lm"], timer, **contrastive.model_inputs())
    with timer("contrastive loss"):
        result = criterion(contrastive.embed(outputs.image_embeds, outputs.text_embeds), outputs.logit_scales)
    return lm_loss + result.loss, (lm_loss, result.loss)


def losses_reference(model, batch: dict, criterion, timer: Timer):
    from finedefics_training.losses import ContrastiveBatch

    lm_inputs, contrastive, k = batch["lm"], batch["contrastive"], batch["num_negatives"]
    _, lm_loss = lm_forward(model, lm_inputs, timer)
    rows = lm_inputs["input_ids"].shape[0]
    with timer("image embedding pass (vision tower again)"):
        image_embeds = model.get_image_embeddings(lm_inputs["pixel_values"], lm_inputs.get("pixel_attention_mask"))
    placed = {}
    for kind, encoded in batch["reference"].items():
        with timer(f"text pass: {kind}"):
            embeds = model.get_text_embeddings(encoded["input_ids"], encoded["attention_mask"])
        width = k if kind.startswith("neg_") else 1
        full = embeds.new_zeros(rows * width, embeds.shape[-1]).index_copy(0, encoded["slots"], embeds)
        placed[kind] = full.reshape(rows, k, -1) if width > 1 else full
    with timer("contrastive loss"):
        dim = image_embeds.shape[-1]
        has_negatives = contrastive.neg_category_index.shape[1] > 0
        zeros = image_embeds.new_zeros(rows, k, dim)
        contrastive_batch = ContrastiveBatch(
            image_embeds=image_embeds,
            attribute_embeds=placed.get("attribute", image_embeds.new_zeros(rows, dim)),
            attribute_mask=contrastive.attribute_index >= 0,
            category_embeds=placed["category"],
            category_ids=contrastive.category_ids,
            neg_attribute_embeds=placed.get("neg_attribute", zeros) if has_negatives else None,
            neg_attribute_mask=contrastive.neg_attribute_index >= 0 if has_negatives else None,
            neg_category_embeds=placed.get("neg_category", zeros) if has_negatives else None,
            neg_category_mask=contrastive.neg_category_index >= 0 if has_negatives else None,
            neg_category_ids=contrastive.neg_category_ids if has_negatives else None,
        )
        result = criterion(contrastive_batch, model.get_logit_scales())
    return lm_loss + result.loss, (lm_loss, result.loss)


LOSSES = {"stage II": losses_stage_two, "stage I (batched)": losses_batched, "stage I (reference)": losses_reference}


def train_step(state: dict, batch: dict, criterion, timer: Timer | None = None):
    """One full optimizer step; returns its wall time and the (LM, contrastive) losses of stage I variants."""
    timer = timer or Timer()
    model, optimizer = state["model"], state["optimizer"]
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss, parts = LOSSES[state["variant"]](model, batch, criterion, timer)
    with timer("backward"):
        loss.backward()
    with timer("optimizer step"):
        optimizer.step()
    return time.perf_counter() - start, parts


# ----------------------------------------------------------------------------- run
def prepare(args):
    import torch

    from finedefics_training.collator import FinedeficsDataCollator
    from finedefics_training.losses import ContrastiveTexts, FinedeficsContrastiveLoss
    from modeling_finedefics.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="finedefics-bench-train-") as folder:
        processor, examples = build_batch(Path(folder), args.batch_size, args.seed)
        collated = FinedeficsDataCollator(processor, stage=1, num_negatives=args.num_negatives)(examples)
    contrastive = ContrastiveTexts.pop_from(collated)
    reference = {}
    for kind, (texts, slots) in reference_texts(examples, args.num_negatives).items():
        encoded = dict(processor.tokenize_texts(texts, padding_side="right"))
        encoded["slots"] = torch.tensor(slots)
        reference[kind] = encoded
    batch = {"lm": collated, "contrastive": contrastive, "reference": reference, "num_negatives": args.num_negatives}

    base = build_tiny_model(processor, preset=args.preset, seed=args.seed).train()
    if not args.train_vision_tower:
        base.model.vision_model.requires_grad_(False)
    states = {}
    for variant in VARIANTS:
        model = copy.deepcopy(base)
        model.temperatures.requires_grad_(variant != "stage II")  # stage II does not train the temperatures
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=0.01)
        states[variant] = {"variant": variant, "model": model, "optimizer": optimizer}

    def tokens(mask) -> list[int]:
        return [int(mask.sum()), mask.numel()]

    image_tokens = args.batch_size * (base.config.perceiver_config.resampler_n_latents + 1)
    shapes = {
        "parameters": sum(p.numel() for p in base.parameters()),
        "trainable_parameters": sum(
            p.numel() for p in states["stage I (batched)"]["model"].parameters() if p.requires_grad),
        "lm_batch": list(collated["input_ids"].shape),
        "batched_text_rows": list(contrastive.contrastive_input_ids.shape),
        "reference_text_rows": {kind: list(encoded["input_ids"].shape) for kind, encoded in reference.items()},
        # [real, real + padding] tokens through the decoder, per pass
        "tokens": {
            "LM pass": tokens(collated["attention_mask"]),
            "batched embedding pass": [
                image_tokens + tokens(contrastive.contrastive_attention_mask)[0],
                (args.batch_size + contrastive.contrastive_input_ids.shape[0])
                * max(contrastive.contrastive_input_ids.shape[1], image_tokens // args.batch_size)],
            **{f"reference {kind} pass": tokens(encoded["attention_mask"]) for kind, encoded in reference.items()},
            "reference image pass": [image_tokens, image_tokens],
        },
    }
    return states, batch, FinedeficsContrastiveLoss(), shapes


def check_first_step(states: dict, batch: dict, criterion) -> dict:
    """The first step of the two stage I variants, from the same weights: same LM and contrastive losses."""
    _, (lm_batched, contrastive_batched) = train_step(states["stage I (batched)"], batch, criterion)
    _, (lm_reference, contrastive_reference) = train_step(states["stage I (reference)"], batch, criterion)
    train_step(states["stage II"], batch, criterion)
    check = {"lm_loss": [lm_batched.item(), lm_reference.item()],
             "contrastive_loss": [contrastive_batched.item(), contrastive_reference.item()]}
    for name, (batched, reference) in check.items():
        if not abs(batched - reference) <= CHECK_TOLERANCE:  # not `assert`: must also hold under python -O
            raise AssertionError(f"first-step {name} differs: batched {batched:.6f} vs reference {reference:.6f} "
                                 f"(tolerance {CHECK_TOLERANCE}); the comparison would not be fair")
    return check


def time_rounds(states: dict, batch: dict, criterion, rounds: int, profile: bool = False) -> dict:
    """``rounds`` round-robin rounds (order rotating each round): per variant, step times or part times."""
    times = {variant: [] for variant in VARIANTS}
    for index in range(rounds):
        order = VARIANTS[index % len(VARIANTS):] + VARIANTS[:index % len(VARIANTS)]
        for variant in order:
            timer = Timer(enabled=profile)
            if profile:
                with module_timing(states[variant]["model"], timer):
                    elapsed, _ = train_step(states[variant], batch, criterion, timer)
            else:
                elapsed, _ = train_step(states[variant], batch, criterion, timer)
            times[variant].append(dict(timer.parts, total=elapsed) if profile else elapsed)
    return times


def summarise(times: dict) -> dict:
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    return {
        variant: {"median_ms": 1000 * medians[variant], "mean_ms": 1000 * statistics.fmean(values),
                  "min_ms": 1000 * min(values), "ratio_to_stage_II": medians[variant] / medians["stage II"]}
        for variant, values in times.items()
    }


def summarise_profile(times: dict) -> dict:
    profile = {}
    for variant, steps in times.items():
        names = list(dict.fromkeys(name for step in steps for name in step))
        parts = {name: 1000 * statistics.median([step.get(name, 0.0) for step in steps]) for name in names}
        measured = sum(value for name, value in parts.items() if name != "total" and not name.startswith("of which"))
        parts["other (zero_grad, glue)"] = max(parts["total"] - measured, 0.0)
        profile[variant] = parts
    return profile


def markdown(result: dict) -> str:
    lines = ["| variant | ms/step (median) | ms/step (mean) | ratio to stage II |", "|---|---|---|---|"]
    for variant, row in result["variants"].items():
        lines.append(f"| {variant} | {row['median_ms']:.1f} | {row['mean_ms']:.1f} | "
                     f"{row['ratio_to_stage_II']:.2f}x |")
    lines.append("")
    lines.append(f"torch threads: {result['threads']}; preset {result['preset']} ({result['shapes']['parameters']:,} "
                 f"parameters, {result['shapes']['trainable_parameters']:,} trainable); batch {result['batch_size']}; "
                 f"{result['repeats']} timed rounds after {result['warmup']} warm-up steps per variant.")
    shapes = result["shapes"]
    lines.append(f"LM batch {shapes['lm_batch']}; batched embedding pass: {result['batch_size']} image rows + "
                 f"text rows {shapes['batched_text_rows']}; reference text passes: "
                 + ", ".join(f"{kind} {shape}" for kind, shape in shapes["reference_text_rows"].items()) + ".")
    lines.append("Decoder tokens per pass, real / with padding: " + "; ".join(
        f"{name} {real} / {padded}" for name, (real, padded) in result["shapes"]["tokens"].items()) + ".")
    check = result["first_step_check"]
    lines.append(f"First-step check (batched vs reference): contrastive loss {check['contrastive_loss'][0]:.6f} vs "
                 f"{check['contrastive_loss'][1]:.6f}, LM loss {check['lm_loss'][0]:.6f} vs "
                 f"{check['lm_loss'][1]:.6f}.")
    ratio = result["variants"]["stage I (batched)"]["ratio_to_stage_II"]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    lines.append(f"Target stage I (batched) <= {TARGET_RATIO}x stage II: {verdict} ({ratio:.2f}x).")
    if result.get("profile"):
        lines += ["", "Breakdown, ms (median per part):", ""]
        names = list(dict.fromkeys(name for parts in result["profile"].values() for name in parts))
        tail = ["backward", "optimizer step", "other (zero_grad, glue)"]
        names.sort(key=lambda name: (name == "total", name.startswith("of which"),
                                     tail.index(name) if name in tail else -1))
        lines.append("| part | " + " | ".join(VARIANTS) + " |")
        lines.append("|---|" + "---|" * len(VARIANTS))
        for name in names:
            cells = [f"{result['profile'][v][name]:.1f}" if name in result["profile"][v] else "" for v in VARIANTS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["micro", "tiny"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20, help="timed round-robin rounds (one step per variant each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-vision-tower", action="store_true", help="also train the vision tower")
    parser.add_argument("--profile", action="store_true", help="also time the parts of each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="finedefics-bench-hf-home-"))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    states, batch, criterion, shapes = prepare(args)
    check = check_first_step(states, batch, criterion)
    time_rounds(states, batch, criterion, max(args.warmup - 1, 0))  # the check was each variant's first step
    times = time_rounds(states, batch, criterion, args.repeats)
    result = {"preset": args.preset, "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "train_vision_tower": args.train_vision_tower,
              "shapes": shapes, "first_step_check": check, "variants": summarise(times),
              "target_ratio": TARGET_RATIO}
    if args.profile:
        result["profile"] = summarise_profile(time_rounds(states, batch, criterion, args.repeats, profile=True))
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
