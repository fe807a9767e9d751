"""Checks on the checkpoint and output folders every command reads or writes, with errors that name them.

- ``last_complete_checkpoint``: the Trainer checkpoint an interrupted run resumes from;
- ``check_model_source``: a model argument (folder or Hub id) before anything is loaded from it;
- ``check_vocabulary``: a tokenizer that fits the model's embedding matrix;
- ``check_output_dir``: a folder to write into.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
# Trainer._save_checkpoint writes the weights, then the optimizer, scheduler and RNG states, and
# trainer_state.json last: a checkpoint whose state file is whole was written to the end.
TRAINER_STATE = "trainer_state.json"
SUPPORTED_MODEL_TYPES = ("finedefics", "idefics2")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


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


# ----------------------------------------------------------------------------- models
def check_model_source(name_or_path: str) -> None:
    """Fail early, naming the file, on a model argument that cannot be loaded.

    A local folder is checked (``check_checkpoint_folder``). A name that does not exist locally is a
    Hub id only when it could be one: a path-like name (``./x``, ``/x``, ``a/b/c``, or ``ck/x`` where
    ``ck`` is a local folder), or any name the offline cache lacks under ``HF_HUB_OFFLINE``, is a
    missing folder, not a Hub repository that "could not be reached".
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        check_checkpoint_folder(path)
        return
    if path.exists():
        raise ValueError(f"model {name_or_path} is a file; expected a checkpoint folder or a Hub id")
    if _looks_local(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    if _hub_offline() and not _cached_on_this_machine(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist (HF_HUB_OFFLINE is set and it is not a "
                                "Hub model cached on this machine)")


def _looks_local(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("./", "../", "/", "~")) or name in (".", "..") or (os.sep != "/" and os.sep in name):
        return True
    if "/" in name and Path(name).parent.is_dir():  # ck/x with a local ck/: a path with a typo, not a Hub id
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _cached_on_this_machine(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_checkpoint_folder(folder: str | Path) -> dict:
    """The config of a local checkpoint folder, after checking it and its safetensors weights can be read."""
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    check_safetensors_files(_weight_files(folder))
    return config


def read_checkpoint_config(folder: Path, supported: tuple[str, ...] = SUPPORTED_MODEL_TYPES) -> dict:
    """``folder/config.json`` as a dict; a missing or broken file or another architecture is a clear error.

    Another architecture (``llava``, ...) would otherwise load into the Idefics2 classes and fail
    minutes later, mid-training, with "image tokens and images do not match".
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder: {config_file} is missing")
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    if config.get("model_type") not in supported:
        raise ValueError(f"{config_file}: model_type is {config.get('model_type')!r}; supported: "
                         f"{', '.join(map(repr, supported))}")
    return config


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files a checkpoint folder's weights are in (none: the loader names what is missing)."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / WEIGHTS] if (folder / WEIGHTS).is_file() else []


def check_safetensors_files(files) -> None:
    """Read each file's safetensors header: a file cut short (an interrupted copy or save) is named here.

    safetensors checks that the header's tensors cover the file exactly, so a truncated file fails
    when it is opened; only the header is read, not the weights.
    """
    from safetensors import SafetensorError, safe_open

    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"weight file {path} is missing")
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable safetensors file (cut short or corrupt: {error}); "
                             "copy or save it again") from None


def check_vocabulary(model, tokenizer, source: str) -> None:
    """Every token id of ``tokenizer`` must index a row of the model's input embeddings.

    A larger tokenizer fails only when a rare token shows up, with an IndexError deep in training or
    evaluation; checked when the model is loaded instead.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    tokens = len(tokenizer)
    if tokens > rows:
        raise ValueError(f"{source}: the tokenizer has {tokens} tokens but the model's embedding matrix has {rows} "
                         f"rows, so token ids {rows}-{tokens - 1} have no embedding; use the tokenizer the model was "
                         "trained with, or resize the embeddings (model.resize_token_embeddings(len(tokenizer)))")


# ----------------------------------------------------------------------------- outputs
def check_output_dir(path: str | Path) -> None:
    """An output folder (it may not exist yet) must not be, or lie below, an existing file."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ValueError(f"output folder {path}: {candidate} is a file, not a folder")
            return
