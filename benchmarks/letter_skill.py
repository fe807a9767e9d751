"""Does training keep the base's lettered multiple choice? The premise's text-only questions, asked again after
every training stage of a demo run.

FOCI's generate mode scores the letter a model writes. The premise measures on the base model whether it can
answer a lettered multiple choice in text at all, in two forms: the species *named* in the question ("Which of
these is Ardran Thistledart?", a copy) and *described* (the species has to be worked out first). This script
asks the same questions (``premise.multiple_choice_in_text``, same options, same order) of the base and of
every stage folder a demo run trained for one seed, so a drop says that training on image questions spent the
skill the generate mode needs.

    python benchmarks/letter_skill.py /tmp/demo-run --seed 0 --output letter_skill.json

The run folder is one ``finedefics demo`` wrote (``data/``, ``runs/base/final``,
``runs/seed-N/<stage>/final``). Text only: no image is read, so it takes seconds per model.
"""

import argparse
import json
from pathlib import Path

FORMS = {"named": True, "described": False}


def stage_folders(run_dir: Path, seed: int) -> dict[str, Path]:
    """``{"base": ..., "<stage folder>": .../final}`` for a demo run: the base it trained from and each stage."""
    base, seed_dir = run_dir / "runs" / "base" / "final", run_dir / "runs" / f"seed-{seed}"
    if not base.is_dir() or not seed_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a finedefics demo folder trained with seed {seed} (it needs "
                                f"runs/base/final and runs/seed-{seed})")
    stages = {stage.name: stage / "final" for stage in sorted(seed_dir.iterdir())
              if (stage / "final" / "config.json").is_file()}
    return {"base": base, **stages}


def letter_skill(folders: dict[str, Path], data, batch_size: int = 32) -> dict:
    """Accuracy (and rare-species accuracy, letters written) of each model in both forms."""
    from finedefics_training.demo.evaluation import load_demo_model
    from finedefics_training.demo.premise import multiple_choice_in_text

    results = {}
    for name, folder in folders.items():
        model, processor = load_demo_model(folder)
        results[name] = {form: multiple_choice_in_text(model, processor, data.categories, data.negatives(),
                                                       data.noun, data.rare, batch_size=batch_size, named=named)
                         for form, named in FORMS.items()}
    return results


def markdown(results: dict) -> str:
    lines = ["| model | named (copy) | named, rare | described | no letter written (named) |", "|---|---|---|---|---|"]
    for name, forms in results.items():
        named, described = forms["named"], forms["described"]
        lines.append(f"| {name} | {100 * named['accuracy']:.1f}% | {100 * named.get('rare_accuracy', 0):.1f}% | "
                     f"{100 * described['accuracy']:.1f}% | {named['answered_letters'].get('?', 0)} of "
                     f"{named['questions']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from finedefics_training.demo.data import DemoData

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a folder finedefics demo wrote")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    data = DemoData.open(args.run_dir / "data", args.run_dir / "data-prepared")
    results = letter_skill(stage_folders(args.run_dir, args.seed), data)
    print(markdown(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
