"""Checks on the checkpoint and output folders every command reads or writes, with errors that name them.

- ``last_complete_checkpoint``: the Trainer checkpoint an interrupted run resumes from;
- ``check_output_dir``: a folder to write into.

The checks on a model argument (``check_model_source``, ``check_vocabulary``, ...) live in
:mod:`finedefics_eval.loading`, which evaluation shares; they are re-exported here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from finedefics_eval.loading import (  # noqa: F401  (re-exported: training's model checks are evaluation's)
    check_checkpoint_folder,
    check_finite_weights,
    check_model_source,
    check_safetensors_files,
    check_vocabulary,
    check_weights_family,
    read_checkpoint_config,
)

logger = logging.getLogger(__name__)


def __getattr__(name: str):
    # Re-exported lazily, as finedefics_eval.loading computes it: it imports every model family's classes.
    if name == "SUPPORTED_MODEL_TYPES":
        from finedefics_eval.loading import supported_model_types

        return supported_model_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
# Trainer._save_checkpoint writes the weights, then the optimizer, scheduler and RNG states, and
# trainer_state.json last: a checkpoint whose state file is whole was written to the end.
TRAINER_STATE = "trainer_state.json"


# ----------------------------------------------------------------------------- resuming
def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that Trainer finished writing, or None.

    transformers' ``get_last_checkpoint`` takes the highest N even when a kill interrupted its
    writing, and resuming from it then fails on every retry. Newer incomplete folders are skipped
    with a warning that says why; Trainer writes over them when the resumed run reaches their step.
    """
    skipped = []
    for step, folder in sorted(_checkpoint_folders(Path(output_dir)), reverse=True):
        problem = _incomplete_because(folder, step)
        if problem is None:
            return str(folder)
        logger.warning("skipping %s: %s (interrupted while it was written?)", folder, problem)
        skipped.append(folder.name)
    if skipped:
        logger.warning("no complete checkpoint in %s (skipped %s): training starts from step 0",
                       output_dir, ", ".join(skipped))
    return None


def _checkpoint_folders(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    matches = ((CHECKPOINT_FOLDER.match(path.name), path) for path in output_dir.iterdir())
    return [(int(match.group(1)), path) for match, path in matches if match and path.is_dir()]


def _incomplete_because(folder: Path, step: int) -> str | None:
    """Why ``folder`` is not a complete checkpoint of ``step``, or None when it is."""
    state_file = folder / TRAINER_STATE
    if not state_file.is_file():
        return f"no {TRAINER_STATE} (Trainer writes it last)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{TRAINER_STATE} is not valid JSON ({error})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        found = state.get("global_step") if isinstance(state, dict) else None
        return f"{TRAINER_STATE} records global_step {found}, not {step}"
    return None


# ----------------------------------------------------------------------------- outputs
def check_output_dir(path: str | Path) -> None:
    """An output folder (it may not exist yet) must not be, or lie below, an existing file."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ValueError(f"output folder {path}: {candidate} is a file, not a folder")
            return
