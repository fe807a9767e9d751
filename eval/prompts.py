"""Compatibility alias: the questions moved to :mod:`finedefics_data.prompts` (shared with training).

``finedefics_eval.prompts`` IS that module (the same object), so earlier imports keep working.
"""

import sys

from finedefics_data import prompts as _prompts

sys.modules[__name__] = _prompts
