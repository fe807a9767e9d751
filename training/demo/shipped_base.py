"""The base model shipped with the package (``training/demo_base/``): when a run may start from it, and
the build record (recipe, weights digest) that decides it and checks a rebuild bit for bit."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib import resources
from pathlib import Path

from .phases import Phases

# One logger for the whole demo, as when it was one module: the console lines keep their
# "finedefics_training.demo:" prefix.
logger = logging.getLogger(__package__)

SHIPPED_BASE = "demo_base"  # weights, config, processor; the model code is the installed package's
BUILD_FILE = "build.json"


def shipped_base_dir() -> Path:
    # demo_base/ is package data of finedefics_training (see pyproject.toml), one level above this subpackage.
    return Path(str(resources.files("finedefics_training").joinpath(SHIPPED_BASE)))


def shipped_base_for(recipe: dict) -> Path | None:
    """The shipped base's folder if it was built from exactly this recipe, else None."""
    folder = shipped_base_dir()
    build_file = folder / BUILD_FILE
    if not build_file.is_file():
        return None
    build = json.loads(build_file.read_text())
    return folder if _canonical(build["recipe"]) == _canonical(recipe) else None


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=list)


def weights_digest(folder: Path) -> str:
    """sha256 of a checkpoint's ``model.safetensors``: what "bit for bit" is checked on."""
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_shipped_base(source: Path, final_dir: Path) -> None:
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(source, final_dir, ignore=shutil.ignore_patterns(BUILD_FILE))
    logger.info("base model: the shipped one (%s), built by `%s`", source,
                json.loads((source / BUILD_FILE).read_text())["command"])

def record_build(base: Path, recipe: dict, phases: Phases, rebuild_base: bool) -> None:
    """Write the base's build record; on ``--rebuild-base``, compare with the shipped base."""
    build = {"recipe": recipe, "sha256": weights_digest(base),
             "seconds": sum(v for k, v in phases.state["done"].items() if k.startswith("base:")),
             "command": "finedefics demo --rebuild-base"}
    (base / BUILD_FILE).write_text(json.dumps(build, indent=1, default=list))
    if not rebuild_base:
        return
    shipped = shipped_base_dir() / BUILD_FILE
    if not shipped.is_file():
        logger.info("rebuilt base %s; no shipped base to compare with", build["sha256"][:16])
        return
    shipped_build = json.loads(shipped.read_text())
    if _canonical(shipped_build["recipe"]) != _canonical(recipe):
        logger.info("rebuilt base %s with a recipe that differs from the shipped base's", build["sha256"][:16])
    elif shipped_build["sha256"] == build["sha256"]:
        logger.info("rebuilt base is bit for bit the shipped one (sha256 %s)", build["sha256"][:16])
    else:
        logger.warning("rebuilt base differs from the shipped one (sha256 %s vs %s): same recipe, other bits "
                       "(another CPU kind or thread count?)", build["sha256"][:16], shipped_build["sha256"][:16])
