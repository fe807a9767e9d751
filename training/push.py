"""Publish a Finedefics checkpoint on the Hugging Face Hub: stage a complete folder, then upload it.

    staged = stage_for_hub("runs/finedefics-8b/stage2/final", "hub-staging",
                           report="runs/eval/report.json", recipe="recipes/idefics2-8b-two-stage.yaml")
    push_to_hub(staged, "me/finedefics-8b", private=True)

Staging copies only what a user of the repo needs (config with ``auto_map``, safetensors weights,
generation config, processor/tokenizer files, the model code files) and writes the model card
as ``README.md``, so the folder that is uploaded is exactly the folder that was checked. The checkpoint is
someone else's data (``docs/SECURITY.md``): its code files are neither staged nor imported unless
``trust_remote_code`` (the installed package's are staged, and the staged folder is checked with the installed
classes), ``auto_map`` entries naming foreign code are dropped, shard names must stay inside the folder, and
credentials in the recipe never reach the card. ``training_args.bin`` (a pickle) is never staged. Every model family
(``modeling_finedefics.families``) is staged: its family is read from the checkpoint's ``model_type``, its code
files are those its classes import (``Family.code_files``: the shared configuration, processing and alignment
files, the family's own module and, for the families other than Idefics2, ``multimodal.py``), and ``auto_map``
points at the family's classes. Uploading goes through ``huggingface_hub.HfApi`` and honours ``HF_ENDPOINT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from finedefics_data.trust import check_inside, secret_keys, without_secrets

from .checkpoints import check_safetensors_files, check_weights_family
from .trusted_code import without_foreign_auto_map

logger = logging.getLogger(__name__)

# Processor, image-processor and tokenizer files transformers may write; whichever exist are staged.
PROCESSOR_FILES = (
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
DEFAULT_COMMIT_MESSAGE = "Upload Finedefics checkpoint"
HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
LOGIN_HINT = "pass --token, set HF_TOKEN, or log in once with `hf auth login`"


# ----------------------------------------------------------------------------- staging
def stage_for_hub(checkpoint_dir: str | Path, staging_dir: str | Path, report=None, recipe=None,
                  base_model: str | None = None, validate: bool = False, repo_id: str | None = None,
                  trust_remote_code: bool = False) -> Path:
    """Copy a complete, merged checkpoint and its model card into ``staging_dir`` (which must be empty).

    ``report`` is an eval report (a dict or list of them, a ``report.json`` or its folder); ``recipe`` is the
    training recipe (a dict, YAML text or a YAML file); ``base_model`` a Hub id for the card's
    metadata (taken from the recipe's ``model_name_or_path`` when that is a Hub id); ``repo_id`` the
    target repo, shown in the card. Results already in the checkpoint's card are kept. With ``validate``
    the staged config is loaded back with the installed classes. ``trust_remote_code`` stages the checkpoint's
    own code files instead of the installed package's, and validation then imports them. Returns the staging
    folder.
    """
    checkpoint = Path(checkpoint_dir)
    weight_files = check_checkpoint(checkpoint)
    report_dict, recipe_dict = load_report(report), load_recipe(recipe)
    card = build_model_card(checkpoint, report_dict, recipe_dict, base_model, repo_id)
    staging = _empty_staging_dir(staging_dir, checkpoint)
    try:
        _copy_checkpoint_files(checkpoint, staging, weight_files, trust_remote_code)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if validate:
            validate_staged(staging, trust_remote_code)
    except BaseException:
        _remove_contents(staging)  # a half-staged folder must neither be uploaded nor block the next attempt
        raise
    logger.info("staged %d files in %s", len(staged_files(staging)), staging)
    return staging


def _copy_checkpoint_files(checkpoint: Path, staging: Path, weight_files: list[str],
                           trust_remote_code: bool = False) -> None:
    config = _read_json(checkpoint / "config.json")
    family = checkpoint_family(config)
    _write_json(staging / "config.json", _with_auto_map(config, config_auto_map(family),
                                                        str(checkpoint / "config.json")))
    shutil.copy2(checkpoint / "generation_config.json", staging / "generation_config.json")
    for name in weight_files:
        _link_or_copy(checkpoint / name, staging / name)
    _stage_processor_files(checkpoint, staging, family)
    _stage_code_files(checkpoint, staging, family, trust_remote_code)


def checkpoint_family(config: dict):
    """The Finedefics family (``modeling_finedefics.families.Family``) of a checkpoint's config dict."""
    from modeling_finedefics.families import family_for_model_type

    return family_for_model_type(config.get("model_type"))


def config_auto_map(family) -> dict:
    """The ``auto_map`` of a Finedefics config of ``family``: its config and model classes in its code files."""
    return {"AutoConfig": _class_reference(family.config),
            "AutoModelForImageTextToText": _class_reference(family.model)}


def processor_auto_map(family) -> dict:
    return {"AutoProcessor": _class_reference(family.processor)}


def _class_reference(cls) -> str:
    from .convert import _class_reference as reference

    return reference(cls)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link weights when staging on the same filesystem: an 8B checkpoint is 16 GB to copy otherwise."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _remove_contents(folder: Path) -> None:
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_checkpoint(checkpoint: Path) -> list[str]:
    """Refuse folders that are not a complete, merged, safetensors checkpoint; return its weight files."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {checkpoint}")
    if (checkpoint / "adapter_config.json").exists():
        raise ValueError(
            f"{checkpoint} is an un-merged PEFT adapter folder (adapter_config.json): merge the adapter into "
            "the base weights first, e.g. push the stage output's final/ folder, which is merged"
        )
    for name in ("config.json", "generation_config.json"):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint} has no {name}: not a complete checkpoint (save it with "
                                    "save_pretrained)")
    if not any((checkpoint / name).is_file() for name in ("processor_config.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{checkpoint} has no processor/tokenizer files: save the processor into it too")
    model_type = _read_json(checkpoint / "config.json").get("model_type")
    if model_type not in finedefics_model_types():
        raise ValueError(f"{checkpoint}/config.json has model_type {model_type!r}, not a Finedefics one "
                         f"({', '.join(map(repr, finedefics_model_types()))}): convert it first with "
                         "`finedefics convert`")
    weight_files = _safetensors_weight_files(checkpoint)
    # A file cut short would otherwise be staged and uploaded as it is.
    safetensors_files = [checkpoint / name for name in weight_files if name.endswith(".safetensors")]
    check_safetensors_files(safetensors_files)
    check_weights_family(checkpoint, _read_json(checkpoint / "config.json"), safetensors_files)
    return weight_files


def finedefics_model_types() -> tuple[str, ...]:
    """The ``model_type`` of every family's Finedefics config ("finedefics" for Idefics2)."""
    from modeling_finedefics.families import FAMILIES

    return tuple(family.model_type for family in FAMILIES.values())


def _safetensors_weight_files(checkpoint: Path) -> list[str]:
    """The safetensors weight files (and shard index) of ``checkpoint``; pickled-only weights are refused."""
    index_path = checkpoint / SAFETENSORS_INDEX
    if index_path.is_file():
        shards = _index_shards(index_path)
        missing = [shard for shard in shards if not (checkpoint / shard).is_file()]
        if missing:
            raise FileNotFoundError(f"{checkpoint} is missing weight shards listed in {SAFETENSORS_INDEX}: {missing}")
        return [SAFETENSORS_INDEX, *shards]
    weights = sorted(path.name for path in checkpoint.glob("*.safetensors"))
    if weights:
        return weights
    pickled = sorted(path.name for pattern in PICKLED_WEIGHT_PATTERNS for path in checkpoint.glob(pattern)
                     if path.name != "training_args.bin")
    if pickled:
        raise ValueError(f"{checkpoint} holds pickled weights only ({', '.join(pickled)}); the Hub copy must be "
                         "safetensors: re-save with model.save_pretrained(folder, safe_serialization=True)")
    raise FileNotFoundError(f"{checkpoint} has no model weights (*.safetensors)")


def _index_shards(index_path: Path) -> list[str]:
    """The shard names of a safetensors index; each must resolve inside the checkpoint folder.

    The index is data from whoever made the checkpoint: ``../x`` or a link leading out would otherwise copy a
    file from elsewhere on this machine into the upload (and outside the staging folder).
    """
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f"{index_path}: weight_map must map tensor names to shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        check_inside(index_path.parent, shard, f"{index_path}: weight_map shard")
        if Path(shard).name != shard:  # staged under the same name: a sub-folder would leave the staging root
            raise ValueError(f"{index_path}: weight_map shard {shard!r} must be a file name, not a path")
    return shards


def _empty_staging_dir(staging_dir: str | Path, checkpoint: Path) -> Path:
    """Create the staging folder; a non-empty one is refused so that no stale file gets uploaded."""
    staging = Path(staging_dir)
    if staging.resolve() == checkpoint.resolve() or checkpoint.resolve() in staging.resolve().parents:
        raise ValueError(f"staging folder {staging} must lie outside the checkpoint folder {checkpoint}")
    if staging.exists() and any(staging.iterdir()):
        raise ValueError(f"staging folder {staging} is not empty: choose a new folder or delete it first")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _stage_processor_files(checkpoint: Path, staging: Path, family) -> None:
    for name in PROCESSOR_FILES:
        if not (checkpoint / name).is_file():
            continue
        if name in ("processor_config.json", "tokenizer_config.json"):
            # Without ``auto_map`` AutoProcessor(trust_remote_code=True) would not find the family's processor.
            _write_json(staging / name, _with_auto_map(_read_json(checkpoint / name), processor_auto_map(family),
                                                       str(checkpoint / name)))
        else:
            shutil.copy2(checkpoint / name, staging / name)


def _stage_code_files(checkpoint: Path, staging: Path, family, trust_remote_code: bool = False) -> None:
    """The installed package's code files; with ``trust_remote_code``, the checkpoint's own where it has them.

    A checkpoint's code files are code from whoever made it: by default they are not uploaded under the user's
    name, and a difference from the installed files is only reported.
    """
    import modeling_finedefics

    from .convert import model_code_files

    package_dir = Path(modeling_finedefics.__file__).parent
    for name in model_code_files(family):
        own = checkpoint / name
        use_own = trust_remote_code and own.is_file()
        if own.is_file() and not use_own and own.read_bytes() != (package_dir / name).read_bytes():
            logger.warning("%s differs from the installed modeling_finedefics/%s; staging the installed one "
                           "(--trust-remote-code stages the checkpoint's own)", own, name)
        shutil.copy2(own if use_own else package_dir / name, staging / name)


def _with_auto_map(config: dict, entries: dict, where: str) -> dict:
    """``config`` whose ``auto_map`` holds ``entries`` (this family's classes) and no entry naming foreign code."""
    return {**config, "auto_map": {**without_foreign_auto_map(config.get("auto_map"), where), **entries}}


def validate_staged(staging: Path, trust_remote_code: bool = False) -> None:
    """Check that the staged folder loads: with the installed classes, or with its shipped code when trusted.

    Without ``trust_remote_code`` no staged file is imported: the staged code files must be the installed
    package's own and the config must load with the installed family's config class.
    """
    if not trust_remote_code:
        _validate_with_installed_classes(staging)
        return
    _validate_with_shipped_code(staging)


def _validate_with_installed_classes(staging: Path) -> None:
    import modeling_finedefics

    from .convert import model_code_files

    family = checkpoint_family(_read_json(staging / "config.json"))
    package_dir = Path(modeling_finedefics.__file__).parent
    changed = [name for name in model_code_files(family)
               if (staging / name).read_bytes() != (package_dir / name).read_bytes()]
    if changed:
        raise ValueError(f"the staged folder {staging} holds code files that are not the installed package's "
                         f"({', '.join(changed)}); pass --trust-remote-code to stage and check them")
    try:
        config = family.config.from_pretrained(staging)
    except Exception as error:  # any failure here means users of the repo could not load it
        raise ValueError(f"the staged folder {staging} does not load as a {family.name} config: {error}") from error
    if config.model_type not in finedefics_model_types():
        raise ValueError(f"the staged folder loads as {config.model_type!r}, not a Finedefics config")
    logger.info("staged config loads with the installed %s", type(config).__name__)


def _validate_with_shipped_code(staging: Path) -> None:
    """Import every class ``auto_map`` names from the staged code files and load the config with it.

    This is what a Hub user's ``trust_remote_code=True`` does. ``AutoConfig`` alone would not do:
    where this package is installed its registered classes take precedence over ``auto_map``, so the
    staged code files would never be imported.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = {**_read_json(staging / "config.json")["auto_map"], **_staged_processor_auto_map(staging)}
    try:
        classes = {name: get_class_from_dynamic_module(reference, str(staging))
                   for name, reference in auto_map.items()}
        config = classes["AutoConfig"].from_pretrained(staging)
    except Exception as error:  # any failure here means users of the repo could not load it
        raise ValueError(f"the staged folder {staging} does not load with its shipped code: {error}") from error
    if config.model_type not in finedefics_model_types():
        raise ValueError(f"the staged folder loads as {config.model_type!r}, not a Finedefics config")
    logger.info("staged code files import: %s", ", ".join(sorted(auto_map.values())))


def _staged_processor_auto_map(staging: Path) -> dict:
    path = staging / "processor_config.json"
    return _read_json(path).get("auto_map", {}) if path.is_file() else {}


def staged_files(staging: str | Path) -> list[str]:
    """Every file under ``staging`` as a repo path, i.e. what the Hub receives."""
    root = Path(staging)
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


# ----------------------------------------------------------------------------- model card inputs
def load_report(report):
    """An eval report (from ``finedefics eval``): a dict or list as is, else a ``report.json`` or its folder."""
    from finedefics_eval.report import load_report as read_report_file

    return report if report is None or isinstance(report, (dict, list)) else read_report_file(report)


def load_recipe(recipe) -> dict | None:
    """A training recipe from a dict, a YAML file, or YAML text."""
    import yaml

    if recipe is None or isinstance(recipe, dict):
        return recipe
    text = str(recipe)
    if isinstance(recipe, Path) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
        if not Path(text).is_file():
            raise FileNotFoundError(f"recipe file not found: {text}")
        text = Path(text).read_text(encoding="utf-8")
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError("the training recipe must be a YAML mapping of settings")
    return loaded


def _base_model_from_recipe(recipe: dict | None) -> str | None:
    """The recipe's starting model, when it names a Hub repo rather than a local folder."""
    name = (recipe or {}).get("model_name_or_path")
    if isinstance(name, str) and HUB_REPO_ID.match(name) and not Path(name).exists():
        return name
    return None


def build_model_card(checkpoint: Path, report, recipe: dict | None, base_model: str | None,
                     repo_id: str | None) -> str:
    """The card text, rendered by ``finedefics_eval.model_card`` from the repository's template.

    Results already in the checkpoint's own card (``finedefics eval`` can write them there, one
    benchmark at a time) are kept unless ``report`` measures them again, so pushing without
    ``--report`` does not drop them.
    """
    from finedefics_eval.model_card import checkpoint_noun, render_model_card

    existing = _existing_card_data(checkpoint)
    recipe = _recipe_without_secrets(recipe)
    base_model = base_model or _base_model_from_recipe(recipe) or getattr(existing, "base_model", None)
    existing_results = list(getattr(existing, "eval_results", None) or [])
    return render_model_card(report, recipe=recipe, base_model=base_model, repo_id=repo_id,
                             existing_results=existing_results, noun=checkpoint_noun(checkpoint))


def _recipe_without_secrets(recipe: dict | None) -> dict | None:
    """The recipe as the public card may show it: credentials (``hub_token``, ``*_token``, ``*_key``) redacted."""
    found = secret_keys(recipe)
    if found:
        logger.warning("the recipe's %s kept out of the model card (redacted)", ", ".join(found))
    return without_secrets(recipe)


def _existing_card_data(checkpoint: Path):
    """The metadata of the checkpoint's README.md, or None when it has none (or none that parses)."""
    from huggingface_hub import ModelCard

    readme = checkpoint / "README.md"
    if not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data
    except Exception as error:  # a hand-written README must not block the push; it is replaced anyway
        logger.warning("ignoring the metadata of %s (%s); the card is rendered afresh", readme, error)
        return None


# ----------------------------------------------------------------------------- upload
def push_to_hub(staging_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                revision: str | None = None, create_pr: bool = False,
                commit_message: str = DEFAULT_COMMIT_MESSAGE, endpoint: str | None = None) -> dict:
    """Upload a staged folder to ``repo_id`` (created if needed) and return the commit / PR URLs.

    ``revision`` names a branch, created when it does not exist yet; ``create_pr`` opens a pull
    request against ``main`` instead of committing to it (huggingface_hub opens folder-upload PRs
    against the default branch only). ``private`` applies when the repo is created. The token comes
    from the argument, ``HF_TOKEN`` or a cached login; the endpoint from the argument or ``HF_ENDPOINT``.
    """
    from huggingface_hub import HfApi

    staging = _checked_staging(staging_dir)
    check_target(repo_id, revision, create_pr)
    token = resolve_token(token)
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with translated_hub_errors(endpoint):
        user = check_endpoint(endpoint, token)
        logger.info("pushing %s to %s/%s as %s", staging, endpoint, repo_id, user)
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision, create_pr=create_pr,
                                   commit_message=commit_message)
    return {"repo_url": str(repo_url), "commit_url": commit.commit_url, "pr_url": commit.pr_url,
            "revision": revision or "main", "files": staged_files(staging)}


def _checked_staging(staging_dir: str | Path) -> Path:
    staging = Path(staging_dir)
    for name in ("config.json", "README.md"):
        if not (staging / name).is_file():
            raise FileNotFoundError(f"{staging} has no {name}: stage the checkpoint with stage_for_hub first")
    return staging


def check_target(repo_id: str, revision: str | None, create_pr: bool) -> None:
    """Refuse a malformed repo id, and a branch combined with a PR (folder-upload PRs target main)."""
    if not HUB_REPO_ID.match(repo_id or ""):
        raise ValueError(f"repo id must look like USER/NAME or ORG/NAME, got {repo_id!r}")
    if create_pr and revision not in (None, "main"):
        raise ValueError("a pull request is opened against main: use either --revision or --create-pr, not both")


def resolve_token(token: str | None) -> str:
    """The given token, else ``HF_TOKEN``, else the cached login; none at all is a clear error."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub to talk to: the argument, else ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_endpoint(endpoint: str, token: str) -> str:
    """Ask the endpoint who the token belongs to, with a timeout, before anything is created or sent.

    huggingface_hub's own calls wait without a time limit, so an endpoint that swallows packets
    would otherwise hang the push; this also catches a rejected token before the upload starts.
    """
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    response = get_session().get(f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token),
                                 timeout=constants.HF_HUB_ETAG_TIMEOUT)
    hf_raise_for_status(response)
    return response.json().get("name", "unknown user")


@contextlib.contextmanager
def translated_hub_errors(endpoint: str):
    """Turn network, offline-mode and rejected-token failures into one-line errors naming the endpoint."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled as error:
        raise ValueError(f"offline mode is on (HF_HUB_OFFLINE): unset it to push to {endpoint}") from error
    except _transport_errors() as error:
        raise ConnectionError(f"cannot reach the Hub endpoint {endpoint} ({error}); check HF_ENDPOINT "
                              "and the network") from error
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == 401:
            raise ValueError(f"{endpoint} rejected the token: {LOGIN_HINT}") from error
        raise


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection failures and timeouts of the HTTP client huggingface_hub uses."""
    try:
        from httpx2 import TransportError  # huggingface_hub >= 2
    except ImportError:
        from httpx import TransportError
    return (TransportError,)


# ----------------------------------------------------------------------------- helpers
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
