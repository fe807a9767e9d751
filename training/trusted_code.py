"""Which code a checkpoint may point at: ``auto_map`` entries naming this package's own classes, nothing else.

A checkpoint's ``config.json`` (and its processor / tokenizer configs) may carry an ``auto_map`` that names a
class in another Hub repo (``"other-user/repo--module.Class"``) or in a file of its own. Whoever loads the
folder with ``trust_remote_code=True`` then runs that code. Folders this package writes (a stage's checkpoints,
``final/``, ``convert``'s output, ``push``'s staging folder) keep only the entries that name a class of the
installed ``modeling_finedefics`` and drop the rest, with a warning naming each (see ``docs/SECURITY.md``).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The files of a saved folder that may hold an ``auto_map``.
AUTO_MAP_FILES = ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json")


@functools.cache
def own_class_references() -> frozenset[str]:
    """Every ``module.Class`` reference this package itself writes into an ``auto_map`` (all families)."""
    from modeling_finedefics.families import FAMILIES

    return frozenset(f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for family in FAMILIES.values()
                     for cls in (family.config, family.model, family.processor))


def is_own_reference(reference) -> bool:
    """Whether an ``auto_map`` value names only this package's classes (a tokenizer's pair may hold None)."""
    if isinstance(reference, (list, tuple)):
        return all(item is None or is_own_reference(item) for item in reference)
    return isinstance(reference, str) and reference in own_class_references()


def without_foreign_auto_map(auto_map, where: str) -> dict:
    """``auto_map`` without the entries that name code outside this package; each dropped one is logged."""
    if not isinstance(auto_map, dict):
        if auto_map is not None:
            logger.warning("%s: dropped an auto_map that is not a mapping (%r)", where, auto_map)
        return {}
    kept = {name: reference for name, reference in auto_map.items() if is_own_reference(reference)}
    for name in auto_map.keys() - kept.keys():
        logger.warning("%s: dropped auto_map entry %s -> %r: it names code outside the finedefics package, which "
                       "would run on the machine of whoever loads this folder with trust_remote_code",
                       where, name, auto_map[name])
    return kept


def drop_foreign_auto_map(config, where: str) -> None:
    """Remove foreign ``auto_map`` entries from a config object (PretrainedConfig or dict) in place."""
    current = config.get("auto_map") if isinstance(config, dict) else getattr(config, "auto_map", None)
    if current is None:
        return
    kept = without_foreign_auto_map(current, where)
    if isinstance(config, dict):
        config["auto_map"] = kept
    else:
        config.auto_map = kept
    if not kept:  # an empty auto_map is noise in a saved config
        config.pop("auto_map") if isinstance(config, dict) else delattr(config, "auto_map")


def clean_saved_auto_maps(folder: str | Path) -> None:
    """Rewrite the JSON configs of a saved folder without foreign ``auto_map`` entries."""
    for name in AUTO_MAP_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "auto_map" not in data:
            continue
        before = data["auto_map"]
        drop_foreign_auto_map(data, str(path))
        if data.get("auto_map") != before:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
