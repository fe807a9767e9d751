"""Compatibility alias: data construction moved to :mod:`finedefics_data`, which evaluation shares.

``finedefics_training.data.<module>`` IS the module ``finedefics_data.<module>`` (the same object in
``sys.modules``), so imports written for earlier versions keep working and patching either name
patches both. New code imports ``finedefics_data``.
"""

import importlib
import sys

_MODULES = ("describe", "kinds", "names", "negatives", "preview", "prompts", "readers", "schema", "synth")

for _name in _MODULES:
    _module = importlib.import_module(f"finedefics_data.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module

# synth is a package: its modules get the old prefix too, or ``finedefics_training.data.synth.drawing``
# would import a second copy of ``finedefics_data.synth.drawing`` (and a patch there would reach nothing).
for _name in ("config", "corpus", "drawing", "loading", "readme", "vocabulary", "writing"):
    sys.modules[f"{__name__}.synth.{_name}"] = importlib.import_module(f"finedefics_data.synth.{_name}")
