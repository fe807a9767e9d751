"""Generation-failure rate with a bootstrap 95% interval.

Loaded by path, offline: ``evaluate.load(".../metrics/generation_failure_rate")``. The module is
self-contained (evaluate copies this one file into its module cache).

A generation failure is an answer from which no option can be read (FOCI's rule: the answer does not
start with one of the choice letters). FOCI counts failures as wrong answers; this rate says how
many of the errors are failures to follow the answer format rather than wrong choices.

    failure_rate = n_failures / n
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Share of answers that could not be parsed into an option, with a percentile-bootstrap 95% interval."

_KWARGS_DESCRIPTION = """
Args:
    failures (`list` of `bool`): per example, whether its answer was a generation failure.
    bootstrap_samples (`int`, defaults to 1000): resamples for the interval; 0 gives no interval.
    seed (`int`, defaults to 0): seed of the resampling.
Returns:
    failure_rate (`float`): n_failures / n.
    failures (`int`): n_failures.
    ci95 (`list` of two `float`, or None): the bootstrap 95% interval of the rate.
    n (`int`): number of examples.
Examples:
    >>> metric = evaluate.load("eval/metrics/generation_failure_rate")
    >>> metric.compute(failures=[False, True, False, False], bootstrap_samples=0)
    {'failure_rate': 0.25, 'failures': 1, 'ci95': None, 'n': 4}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenerationFailureRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"failures": datasets.Value("bool")}),
        )

    def _compute(self, failures, bootstrap_samples=1000, seed=0):
        if len(failures) == 0:
            raise ValueError("the generation-failure rate needs at least one answer")
        flags = np.array(failures, dtype=np.float64)
        return {"failure_rate": float(flags.mean()), "failures": int(flags.sum()),
                "ci95": _bootstrap_mean_ci(flags, bootstrap_samples, seed), "n": len(flags)}


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
