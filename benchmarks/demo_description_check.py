"""How well does a demo model describe birds? Share of true attribute values its descriptions name.

Used to check what the demo's base stage gave the model (object information extraction): it asks
"Describe the attributes of the bird in the image." for every 20th image of each split and counts
how many of the image's structured attribute values appear in the answer.

    python benchmarks/demo_description_check.py finedefics-demo            # the base model
    python benchmarks/demo_description_check.py finedefics-demo --model finedefics-demo/model
"""

import argparse
import json
from pathlib import Path

import torch

from finedefics_training.data.synth import load_benchmark
from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

QUESTION = "Describe the attributes of the bird in the image."


def attribute_recall(model, processor, rows) -> float:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[image] for image in rows["image"]], text=[prompt] * len(rows),
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    hits = total = 0
    for answer, attributes in zip(answers, rows["attributes"]):
        for value in json.loads(attributes).values():
            total += 1
            hits += value.replace("_", " ") in answer
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path, help="output folder of `finedefics demo`")
    parser.add_argument("--model", type=Path, help="checkpoint to check (default: the demo's base model)")
    parser.add_argument("--every", type=int, default=20, help="take every N-th image of each split")
    args = parser.parse_args()
    folder = args.model or args.demo_dir / "runs" / "base" / "final"
    model = FinedeficsForConditionalGeneration.from_pretrained(folder).eval()
    processor = FinedeficsProcessor.from_pretrained(folder)
    splits = load_benchmark(args.demo_dir / "data")
    for split in ("train", "test"):
        rows = splits[split].select(range(0, len(splits[split]), args.every))
        print(f"{split}: {100 * attribute_recall(model, processor, rows):.1f}% of true attribute values named "
              f"({len(rows)} images, {folder})")


if __name__ == "__main__":
    main()
