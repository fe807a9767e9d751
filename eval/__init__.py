"""Finedefics evaluation: FOCI-style benchmarks, scoring modes, metrics, reports and model cards.

Installed as ``finedefics_eval`` (the repository folder is ``eval/``).

    from finedefics_eval import evaluate_model, load_benchmark, write_report

    benchmark = load_benchmark("bird-200", image_root="/data/CUB_200_2011")
    report = evaluate_model(model, processor, benchmark, modes=("generate", "likelihood", "embedding"))
    write_report(report, "runs/eval/bird-200")

Heavy libraries (torch, transformers, evaluate, matplotlib) are imported by the functions that use
them, so importing this package is cheap.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "Benchmark": "benchmarks", "load_benchmark": "benchmarks",
    "evaluate_model": "runner",
    "write_report": "report", "load_report": "report", "report_from_prediction_file": "report",
    "eval_results_from_report": "model_card", "render_model_card": "model_card", "write_model_card": "model_card",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
