"""Does a model's multiple-choice letter say what it would name? Read from a demo report's prediction files.

For every model of a `finedefics demo` report (base, and each variant of each seed) this compares the
generate mode's 4-way answer with the same model's open-set answer on the same image:

- *agreement*: the option picked by letter is the name the model writes when asked without options;
- *letter right when the name is right*: of the images the model names correctly, the share whose
  letter it also gets right (1.0 for a model whose only difficulty is recognising the category);
- the letters it answers, to show a letter prior.

    python benchmarks/answer_agreement.py finedefics-demo/report
"""

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path


def agreement(generate: list[dict], open_set: list[dict], folder: Path | str = "") -> dict:
    if [row["image"] for row in generate] != [row["image"] for row in open_set]:
        raise ValueError(f"{folder}: predictions-generate.json and predictions-open_set.json do not list the same "
                         "images in the same order")
    named = [row["predicted"] == row["correct"] for row in open_set]
    lettered = [row["predicted"] == row["correct"] for row in generate]
    both = sum(n and m for n, m in zip(named, lettered))
    return {
        "images": len(generate),
        "agreement": sum(g["predicted"] == o["predicted"] for g, o in zip(generate, open_set)) / len(generate),
        "letter_right_when_name_right": both / sum(named) if any(named) else None,
        "letters": dict(sorted(Counter((row["predicted_raw"].strip() or "?")[:1] for row in generate).items())),
    }


def _mean_percent(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows if row[key] is not None]
    return f"{100 * statistics.mean(values):.1f}" if values else "-"


def model_folders(report: Path) -> list[Path]:
    """Every folder of the report holding both prediction files (base/, seed-N/<variant>/)."""
    return sorted(path.parent for path in report.rglob("predictions-generate.json")
                  if (path.parent / "predictions-open_set.json").is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a demo report folder (finedefics-demo/report)")
    args = parser.parse_args(argv)
    folders = model_folders(args.report)
    if not folders:
        raise SystemExit(f"{args.report}: no model folder with predictions-generate.json and "
                         "predictions-open_set.json")
    results = {}
    for folder in folders:
        read = [json.loads((folder / f"predictions-{mode}.json").read_text())["predictions"]
                for mode in ("generate", "open_set")]
        results[str(folder.relative_to(args.report))] = agreement(*read, folder=folder)
    by_variant: dict[str, list[dict]] = {}
    for name, result in results.items():
        by_variant.setdefault(name.split("/")[-1], []).append(result)
    print("| model | seeds | agreement (%) | letter right when name right (%) | letters answered |")
    print("|---|---|---|---|---|")
    for variant, rows in by_variant.items():
        letters = Counter()
        for row in rows:
            letters.update(row["letters"])
        shown = ", ".join(f"{letter} {count}" for letter, count in sorted(letters.items()))
        print(f"| {variant} | {len(rows)} | {_mean_percent(rows, 'agreement')} | "
              f"{_mean_percent(rows, 'letter_right_when_name_right')} | {shown} |")
    return results


if __name__ == "__main__":
    main()
