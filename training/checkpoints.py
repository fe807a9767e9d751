"""Checks on the checkpoint and output folders every command reads or writes, with errors that name them.

- ``last_complete_checkpoint``: the Trainer checkpoint an interrupted run resumes from;
- ``check_output_dir``: a folder to write into.

The checks on a model argument (``check_model_source``, ``check_vocabulary``, ...) live in
:mod:`finedefics_eval.loading`, which evaluation shares; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
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


# ----------------------------------------------------------------------------- one run per output folder
LOCK_FILE = ".finedefics-run.lock"


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path):
    """Hold ``output_dir``'s lock file for the run; a second run on the folder is refused while the first lives.

    Two runs writing one folder both "succeeded" and left a mix of their checkpoints. The lock names the process
    (pid and host); a lock whose process is gone (a killed run) is taken over with a warning. Only the main
    process of a multi-process launch takes it (the others share its folder).
    """
    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    folder = Path(output_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    _take_lock(lock)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a run refused before writing anything leaves no trace


def _take_lock(lock: Path) -> None:
    owner = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _live_holder(lock)
            if holder:
                raise ValueError(f"output_dir {lock.parent} is in use by another run ({holder}, lock file {lock}); "
                                 "wait for it, or choose another output_dir") from None
            logger.warning("taking over the stale lock %s (its run is gone)", lock)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(owner)
        return
    raise ValueError(f"output_dir {lock.parent}: could not take the lock file {lock}")


def _live_holder(lock: Path) -> str | None:
    """``pid N on HOST`` when the lock's process is alive (or on another host, which cannot be checked)."""
    try:
        pid_text, host = lock.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # unreadable or half-written: its writer died before finishing
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return f"pid {pid} on {host}"
