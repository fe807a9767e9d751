"""Compatibility alias: the demo's data moved to :mod:`finedefics_training.demo.data`.

``finedefics_training.demo_data`` IS that module (the same object in ``sys.modules``), so earlier
imports keep working and patching either name patches both.
"""

import sys

from .demo import data as _data

sys.modules[__name__] = _data
