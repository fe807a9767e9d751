"""Loading a Finedefics checkpoint for evaluation (and training), with errors that name the file.

- ``check_model_source``: a model argument (folder or Hub id) before anything is loaded from it;
- ``check_vocabulary``: a tokenizer that fits the model's embedding matrix;
- ``load_model``: the model (eval mode, on a device) and its processor;
- ``load_adapter_checkpoint``: a LoRA adapter folder merged into its base, as training merges it;
- ``checkpoint_noun``: what a checkpoint calls its objects in the questions it was trained with;
- ``negatives_option``: ``finedefics eval --negatives auto|names|FILE`` as ``load_benchmark``'s argument.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from finedefics_data.trust import check_inside

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"


def supported_model_types() -> tuple[str, ...]:
    """Every family's Finedefics and stock model_type (``modeling_finedefics.families``), Idefics2's first.

    Also readable as ``SUPPORTED_MODEL_TYPES``; read from the registry at each call (not cached: a family may be
    registered later), and only when asked, as the registry imports every family's classes.
    """
    from modeling_finedefics.families import FAMILIES

    return tuple(dict.fromkeys(model_type for family in FAMILIES.values()
                               for model_type in (family.model_type, family.stock_model_type)))


def __getattr__(name: str):
    if name == "SUPPORTED_MODEL_TYPES":  # lazily: `finedefics --help` and the checks before loading stay light
        return supported_model_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_model_source(name_or_path: str) -> None:
    """Fail early, naming the file, on a model argument that cannot be loaded.

    A local folder is checked (``check_checkpoint_folder``). A name that does not exist locally is a
    Hub id only when it could be one: a path-like name (``./x``, ``/x``, ``a/b/c``, or ``ck/x`` where
    ``ck`` is a local folder), or any name the offline cache lacks under ``HF_HUB_OFFLINE``, is a
    missing folder, not a Hub repository that "could not be reached".
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir() and is_adapter_folder(path):
        check_model_source(adapter_base(path))
        return
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
    weight_files = _weight_files(folder)
    check_safetensors_files(weight_files)
    check_weights_family(folder, config, weight_files)
    return config


def read_checkpoint_config(folder: Path, supported: tuple[str, ...] | None = None) -> dict:
    """``folder/config.json`` as a dict; a missing or broken file or another architecture is a clear error.

    ``supported`` defaults to every family's model types (``supported_model_types``). An architecture of no
    family would otherwise load into the wrong classes and fail minutes later, mid-training, with "image
    tokens and images do not match".
    """
    supported = supported_model_types() if supported is None else supported
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
    if (folder / WEIGHTS_INDEX).is_file():
        return index_shard_files(folder)
    return [folder / WEIGHTS] if (folder / WEIGHTS).is_file() else []


def index_shard_files(folder: Path) -> list[Path]:
    """The shard files ``folder/model.safetensors.index.json`` names, each resolving inside ``folder``.

    The index is the checkpoint maker's data: a shard named '../x', or a link leading out, is refused rather
    than read (or copied into an upload) from elsewhere on this machine.
    """
    index = Path(folder) / WEIGHTS_INDEX
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f"{index} has no weight_map mapping tensor names to shard file names")
    return [check_inside(folder, name, f"{index}: weight_map shard") for name in sorted(set(weight_map.values()))]


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


def weights_families(weight_files) -> tuple[str, tuple[str, ...]] | None:
    """(signature tensor name, the families whose weights hold it) for the given safetensors files, or None.

    Each family names its signature (``Family.weight_signature``); they are tried in registration order."""
    from safetensors import safe_open

    from modeling_finedefics.families import FAMILIES

    keys = []
    for path in weight_files:
        with safe_open(str(path), framework="pt") as reader:
            keys += list(reader.keys())
    for family in FAMILIES.values():
        if family.weight_signature and any(family.weight_signature in key for key in keys):
            return family.weight_signature, tuple(name for name, other in FAMILIES.items()
                                                  if other.weight_signature == family.weight_signature)
    return None


def check_weights_family(folder: Path, config: dict, weight_files=None) -> None:
    """Refuse a config of one model family over weights of another (``model_type: llava`` on Idefics2 weights).

    Loading them fails much later: with hundreds of missing and unexpected tensor names, a TypeError about a
    config field, or a converted checkpoint that nothing can load.
    """
    from modeling_finedefics.families import family_for_model_type

    found = weights_families(_weight_files(folder) if weight_files is None else weight_files)
    config_family = family_for_model_type(config.get("model_type")).name
    if found is not None and config_family not in found[1]:
        raise ValueError(f"{folder / 'config.json'} is a {config_family} config (model_type "
                         f"{config.get('model_type')!r}) but the weights in {folder} are {' / '.join(found[1])} "
                         f"weights (they hold {found[0]!r} tensors): the config and the weights belong to different "
                         "model families")


def check_vocabulary(model, tokenizer, source: str) -> None:
    """Every token id of ``tokenizer`` must index a row of the model's input embeddings.

    A larger tokenizer fails only when a rare token shows up, with an IndexError deep in training or
    evaluation; checked when the model is loaded instead.
    """
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 keeps the full shape in ds_shape
    tokens = len(tokenizer)
    if tokens > rows:
        raise ValueError(f"{source}: the tokenizer has {tokens} tokens but the model's embedding matrix has {rows} "
                         f"rows, so token ids {rows}-{tokens - 1} have no embedding; use the tokenizer the model was "
                         "trained with, or resize the embeddings (model.resize_token_embeddings(len(tokenizer)))")


def load_model(name_or_path: str, device: str = "auto", dtype: str = "auto"):
    """A Finedefics model (eval mode, on ``device``) and its processor; ``auto`` picks cuda/bfloat16 when present.

    The checkpoint's ``model_type`` picks the family (``modeling_finedefics.families``): a Finedefics checkpoint
    of any family, or a stock one (``qwen2_vl``, ``llava``, ...), loads into that family's Finedefics classes. A
    LoRA adapter folder is merged into its base (:func:`load_adapter_checkpoint`).
    """
    import torch
    from transformers import PretrainedConfig

    from modeling_finedefics.families import family_for_model_type

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    check_model_source(name_or_path)
    if is_adapter_folder(name_or_path):
        model, processor, _ = load_adapter_checkpoint(name_or_path)
        model = model.to(getattr(torch, dtype))
    else:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
        family = family_for_model_type(config.get("model_type"))
        model = family.model.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
        processor = family.processor.from_pretrained(name_or_path)
    check_vocabulary(model, processor.tokenizer, name_or_path)
    check_finite_weights(model, name_or_path)
    return model.to(device).eval(), processor


def is_adapter_folder(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is a local PEFT adapter folder (``adapter_config.json``, no full weights)."""
    return (Path(name_or_path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base checkpoint a LoRA adapter folder names (``base_model_name_or_path`` of ``adapter_config.json``)."""
    config_file = Path(adapter_dir).expanduser() / ADAPTER_CONFIG
    config = _read_json(config_file)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{config_file} names no base checkpoint (base_model_name_or_path); the adapter cannot be "
                         "merged into one")
    return base


def model_config(path: str, trust_remote_code: bool = False):
    """``(config, family)`` of a stock or Finedefics checkpoint; another architecture is a clear error."""
    from transformers import AutoConfig

    from modeling_finedefics.families import family_for_model_type

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    try:
        family = family_for_model_type(config.model_type)
    except ValueError as error:  # a Hub model (local folders were checked before)
        raise ValueError(f"{path}: {error}") from None
    return config, family


def without_quantization(config):
    """``config`` without its ``quantization_config`` (QLoRA's adapters merge into full-precision weights)."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


@contextlib.contextmanager
def peft_checkpointing_deprecations():
    """Silence exactly the FutureWarnings PEFT's own calls raise for transformers' old checkpointing names.

    PEFT reads ``model.is_gradient_checkpointing`` (wrapping or loading an adapter) and calls
    ``gradient_checkpointing_enable``, which transformers 5 deprecates; nothing in a recipe can avoid
    them (the config uses the new ``activation_checkpointing``), so every LoRA run would print them.
    """
    with warnings.catch_warnings():
        for name in ("is_gradient_checkpointing", "gradient_checkpointing_enable"):
            warnings.filterwarnings("ignore", message=f"`{name}` is deprecated", category=FutureWarning)
        yield


def merge_saved_adapter(adapter_dir: str | Path, dtype=None):
    """A saved adapter applied to a fresh copy of its base (``base_model_name_or_path``) and merged."""
    import torch
    from peft import PeftConfig, PeftModel

    base_path = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    base_config, family = model_config(base_path)
    if base_config.model_type != family.model_type:  # a stock base: its tokenizer's EOS, as in training
        eos = family.load_processor(base_path).tokenizer.eos_token_id
        base_config = family.finedefics_config(base_config, eos)
    base = family.model.from_pretrained(base_path, config=without_quantization(base_config),
                                        dtype=dtype or torch.float32)
    with peft_checkpointing_deprecations():
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def load_adapter_checkpoint(adapter_dir: str | Path):
    """``(model, processor, base)`` of a LoRA adapter folder: merged into its base in float32 (no rounding of the
    LoRA update), then in the base's dtype as training's final/ is; the processor saved beside the adapter
    (training saves it there), else the base's."""
    import torch
    from peft import PeftConfig

    from modeling_finedefics.families import family_of

    adapter_dir = Path(adapter_dir)
    base = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    model = merge_saved_adapter(adapter_dir)
    base_dtype = model_config(base)[0].dtype
    if isinstance(base_dtype, torch.dtype) and base_dtype.is_floating_point:
        model = model.to(base_dtype)
    has_processor = any((adapter_dir / name).is_file() for name in ("processor_config.json", "tokenizer_config.json"))
    processor = family_of(model).load_processor(str(adapter_dir if has_processor else base))
    return model.eval(), processor, base


def non_finite_parameters(model, shown: int = 3) -> list[str]:
    """Names of (up to ``shown``) parameters that hold NaN or inf values."""
    import torch

    found = []
    for name, parameter in model.named_parameters():
        parameter = local_values(parameter)
        if parameter.is_floating_point() and not torch.isfinite(parameter.detach()).all():
            found.append(name)
            if len(found) == shown:
                break
    return found


def local_values(parameter):
    """What this process holds of ``parameter``: itself, its ZeRO-3 partition, or its FSDP2 shard."""
    if getattr(parameter, "ds_tensor", None) is not None:
        return parameter.ds_tensor
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


def check_finite_weights(model, source: str) -> None:
    """Refuse a model with NaN or inf weights: every score it produced would be meaningless."""
    bad = non_finite_parameters(model)
    if bad:
        raise ValueError(f"{source}: the weights hold NaN or inf values (in {', '.join(bad)}); the checkpoint is "
                         "broken (a diverged training run?), its scores would mean nothing")


def checkpoint_noun(name_or_path: str):
    """The ``ObjectNoun`` stored in a checkpoint's config.json (local or on the Hub), or None."""
    from transformers import PretrainedConfig

    from finedefics_data.prompts import ObjectNoun

    check_model_source(name_or_path)
    if is_adapter_folder(name_or_path):
        return checkpoint_noun(adapter_base(name_or_path))
    config, _ = PretrainedConfig.get_config_dict(name_or_path)
    return ObjectNoun.from_config(config)


class LazyModel:
    """``load_model`` on first use, so that benchmarks are checked before minutes of loading, and mined with it."""

    def __init__(self, name_or_path: str, device: str = "auto", dtype: str = "auto"):
        self.arguments, self.loaded = (name_or_path, device, dtype), None

    def get(self):
        if self.loaded is None:
            self.loaded = load_model(*self.arguments)
        return self.loaded


def negatives_option(choice: str, model: LazyModel) -> dict | Callable | None:
    """``load_benchmark``'s ``negatives`` for ``auto`` (mined by the model's text embeddings when rows carry no
    attributes), ``names`` (string similarity) or a JSON file ``{category: [negatives]}``."""
    if choice == "names":
        return None
    if choice != "auto":
        return read_negatives_file(Path(choice))

    def model_text_embeddings(names: list[str]):
        from finedefics_data.negatives import finedefics_text_embedder, mine_by_embeddings

        loaded_model, processor = model.get()
        return mine_by_embeddings(names, finedefics_text_embedder(loaded_model, processor), k=3)

    return model_text_embeddings


def read_negatives_file(path: Path) -> dict:
    """A JSON object mapping each category to a list of similar categories."""
    from finedefics_data.schema import read_json_file

    negatives = read_json_file(path, "negatives file", " (or use --negatives auto|names)")
    if not isinstance(negatives, dict) or not all(isinstance(v, list) for v in negatives.values()):
        raise ValueError(f"{path}: expected a JSON object mapping each category to a list of similar categories")
    return negatives
