"""Macro accuracy (mean of per-class accuracies) with a bootstrap 95% interval.

Loaded by path, offline: ``evaluate.load(".../metrics/macro_accuracy")``. The module is
self-contained (evaluate copies this one file into its module cache).

    macro_accuracy = (1 / C) * sum_c  n_correct(c) / n(c)

over the C classes present in the references. Unlike plain accuracy it weighs a rare class as much
as a common one. The 95% interval is the percentile bootstrap over examples; a class missing from a
resample is left out of that resample's mean.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean over reference classes of the per-class accuracy, with a percentile-bootstrap 95% interval."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): predicted labels.
    references (`list` of `str`): ground-truth labels; their distinct values are the classes.
    bootstrap_samples (`int`, defaults to 1000): resamples for the interval; 0 gives no interval.
    seed (`int`, defaults to 0): seed of the resampling.
Returns:
    macro_accuracy (`float`): the mean per-class accuracy.
    ci95 (`list` of two `float`, or None): the bootstrap 95% interval.
    per_class (`dict`): class -> accuracy.
    num_classes (`int`): number of classes in the references.
Examples:
    >>> metric = evaluate.load("eval/metrics/macro_accuracy")
    >>> metric.compute(predictions=["a", "a", "a"], references=["a", "a", "b"], bootstrap_samples=0)["macro_accuracy"]
    0.5
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, bootstrap_samples=1000, seed=0):
        if len(predictions) == 0:
            raise ValueError("macro accuracy needs at least one prediction")
        classes, class_ids = np.unique(np.array(references, dtype=object), return_inverse=True)
        hits = np.array([p == r for p, r in zip(predictions, references)], dtype=np.float64)
        per_class = _per_class_accuracy(class_ids, hits, len(classes))
        return {
            "macro_accuracy": float(per_class.mean()),
            "ci95": _bootstrap_ci(class_ids, hits, len(classes), bootstrap_samples, seed),
            "per_class": {str(c): float(a) for c, a in zip(classes, per_class)},
            "num_classes": len(classes),
        }


def _per_class_accuracy(class_ids, hits, num_classes):
    counts = np.bincount(class_ids, minlength=num_classes)
    correct = np.bincount(class_ids, weights=hits, minlength=num_classes)
    present = counts > 0
    return correct[present] / counts[present]


def _bootstrap_ci(class_ids, hits, num_classes, samples, seed):
    """Percentile-bootstrap 95% interval of the macro accuracy, resampling examples."""
    if samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        rows = rng.integers(0, len(hits), size=len(hits))
        values.append(_per_class_accuracy(class_ids[rows], hits[rows], num_classes).mean())
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]
