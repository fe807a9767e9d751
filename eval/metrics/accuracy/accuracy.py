"""Accuracy with a bootstrap 95% interval, for multiple-choice and top-1 recognition.

Loaded by path, offline: ``evaluate.load(".../metrics/accuracy")``. The module is self-contained
(evaluate copies this one file into its module cache), so its bootstrap is written out here.

    accuracy = n_correct / n

The 95% interval is the percentile bootstrap: ``bootstrap_samples`` resamples of the n examples with
replacement, the 2.5th and 97.5th percentiles of their accuracies.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Share of predictions equal to their reference label, with a percentile-bootstrap 95% interval."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): predicted labels (a generation failure is any string that is no label).
    references (`list` of `str`): ground-truth labels.
    bootstrap_samples (`int`, defaults to 1000): resamples for the interval; 0 gives no interval.
    seed (`int`, defaults to 0): seed of the resampling.
Returns:
    accuracy (`float`): n_correct / n.
    ci95 (`list` of two `float`, or None): the bootstrap 95% interval.
    n (`int`): number of examples.
Examples:
    >>> metric = evaluate.load("eval/metrics/accuracy")
    >>> metric.compute(predictions=["a", "b"], references=["a", "c"], bootstrap_samples=0)
    {'accuracy': 0.5, 'ci95': None, 'n': 2}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
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
            raise ValueError("accuracy needs at least one prediction")
        hits = np.array([p == r for p, r in zip(predictions, references)], dtype=np.float64)
        return {"accuracy": float(hits.mean()), "ci95": _bootstrap_mean_ci(hits, bootstrap_samples, seed),
                "n": len(hits)}


def _bootstrap_mean_ci(values, samples, seed, chunk=200):
    """Percentile-bootstrap 95% interval of the mean of ``values`` (resampled in chunks to bound memory)."""
    if samples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, chunk):
        rows = rng.integers(0, len(values), size=(min(chunk, samples - start), len(values)))
        means.append(values[rows].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return [float(low), float(high)]
