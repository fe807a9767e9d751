"""Compatibility alias: the demo's report moved to :mod:`finedefics_training.demo.report`.

``finedefics_training.demo_report`` IS that module (the same object in ``sys.modules``), so earlier
imports keep working and patching either name patches both.
"""

import sys

from .demo import report as _report

sys.modules[__name__] = _report
