"""Convert checkpoints into the Finedefics layout.

Three sources are understood:
(a) a stock Idefics2 checkpoint folder, as ``Idefics2ForConditionalGeneration.save_pretrained`` writes it:
    the weights are kept as they are and fresh alignment parameters (temperatures at
    ``init_temperature``) are added;
(b) the official Finedefics release layout: ``model_type`` "idefics2" weights plus extra keys.
    ``model.ia_logit_scale`` / ``model.ac_logit_scale`` hold ``log(1 / tau)`` (CLIP's convention) and
    map onto ``temperatures.object_attribute`` / ``temperatures.attribute_category``;
    ``model.ia_temp`` / ``model.ac_temp`` hold ``tau`` itself and are converted to ``log(1 / tau)``;
    ``model.vision_projector.*`` / ``model.text_projector.*`` were never used by the released code and are
    dropped. Every key that is dropped or cannot be mapped is reported, never silently discarded;
(c) a stock checkpoint of another supported family (Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA; see
    ``modeling_finedefics.families``), written by its transformers class: every tensor is kept under its own
    name (any older key layout transformers renames for the stock class it renames for the Finedefics class
    too), temperatures are added, and the config becomes the family's Finedefics config.

Weights are rewritten shard by shard with safetensors (no pickle, one shard in memory at a time), so
an 8B checkpoint converts on a machine without a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from finedefics_data.trust import check_inside
from finedefics_eval.loading import index_shard_files

from .checkpoints import check_output_dir, check_safetensors_files, check_weights_family, read_checkpoint_config
from .trusted_code import clean_saved_auto_maps

logger = logging.getLogger(__name__)

RELEASE_LOGIT_SCALE_KEYS = {
    "model.ia_logit_scale": "temperatures.object_attribute",
    "model.ac_logit_scale": "temperatures.attribute_category",
}
RELEASE_TEMPERATURE_KEYS = {
    "model.ia_temp": "temperatures.object_attribute",
    "model.ac_temp": "temperatures.attribute_category",
}
UNUSED_RELEASE_PREFIXES = ("model.vision_projector.", "model.text_projector.")
TEMPERATURE_KEYS = ("temperatures.object_attribute", "temperatures.attribute_category")
PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja",
    "added_tokens.json", "generation_config.json", "vocab.json", "merges.txt",
)


@dataclass
class ConversionReport:
    """What the converter did with every key of the source checkpoint."""

    source: str
    source_format: str = ""
    family: str = "idefics2"
    kept: int = 0
    mapped: dict[str, str] = field(default_factory=dict)
    added: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        from modeling_finedefics.families import FAMILIES

        kind = FAMILIES[self.family].stock_label
        lines = [f"converted {self.source} ({self.source_format}): kept {self.kept} {kind} tensors"]
        lines += [f"  mapped  {old} -> {new}" for old, new in self.mapped.items()]
        lines += [f"  added   {key} = {value:.6g} (fresh)" for key, value in self.added.items()]
        lines += [f"  dropped {key}: {why}" for key, why in self.dropped.items()]
        lines += [f"  UNMAPPED {key}: not an Idefics2 or Finedefics key, not written" for key in self.unmapped]
        return "\n".join(lines)


def convert_checkpoint(source: str | Path, output_dir: str | Path, summary_token_id: int | None = None,
                       init_temperature: float = 0.07, embed_dim: int = 0) -> ConversionReport:
    """Convert a stock checkpoint folder of a supported family (or the Finedefics release) into a Finedefics
    checkpoint of the same family.

    Args:
        source: folder with ``config.json`` and safetensors weights.
        output_dir: where the Finedefics checkpoint is written (config with ``auto_map``, weights, code,
            processor files, and ``conversion_report.json``).
        summary_token_id: token pooled for embeddings; defaults to the source tokenizer's EOS.
        init_temperature: temperature of alignment parameters the source does not have.
        embed_dim: size of fresh projection heads (0 = none). Heads are never carried over from the
            release, whose projectors were unused.
    """
    if not Path(source).is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist" if not Path(source).exists()
                                else f"{source} is a file; expected a checkpoint folder")
    check_output_dir(output_dir)
    source, output_dir = Path(source), Path(output_dir)
    if output_dir.resolve() == source.resolve():  # shards would be rewritten while they are read
        raise ValueError(f"output folder {output_dir} is the source folder: write the conversion to a new folder")
    config_dict, family = _source_config(source)
    weight_files = _weight_files(source)
    check_safetensors_files(weight_files)
    check_weights_family(source, config_dict, weight_files)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(source=str(source), family=family.name)
    index = _convert_shards(weight_files, output_dir, report, family.stock_key_prefixes)
    _add_missing_temperatures(index, output_dir, report, init_temperature)
    if embed_dim:
        raise NotImplementedError("fresh projection heads on conversion are not supported yet; "
                                  "convert with embed_dim=0")
    released = family.has_release_checkpoint and (report.mapped or report.dropped)
    report.source_format = "finedefics-release" if released else family.name
    _write_index(index, output_dir)
    _write_config(config_dict, source, output_dir, summary_token_id, init_temperature, family)
    _copy_processor_files(source, output_dir, family)
    _copy_model_code(output_dir, family)
    clean_saved_auto_maps(output_dir)  # a copied tokenizer config may name foreign code
    (output_dir / "conversion_report.json").write_text(json.dumps(asdict(report), indent=2))
    logger.info("converted %s -> %s (%s)", source, output_dir, report.source_format)
    return report


def _source_config(source: Path):
    """The source's config dict and its family (a clear error for an unsupported ``model_type``)."""
    from modeling_finedefics.families import FAMILIES, family_for_model_type

    supported = tuple(t for family in FAMILIES.values() for t in (family.stock_model_type, family.model_type))
    config_dict = read_checkpoint_config(source, supported=supported)
    return config_dict, family_for_model_type(config_dict["model_type"])


def _weight_files(source: Path) -> list[Path]:
    files = sorted(source.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in source.glob("*.bin"))
        hint = f" (found pickled {pickled}; re-save them with safetensors first)" if pickled else ""
        raise ValueError(f"{source} has no .safetensors weights{hint}")
    # The source is someone else's folder: its index and its weight files must not lead out of it.
    if (source / "model.safetensors.index.json").is_file():
        index_shard_files(source)
    return [check_inside(source, file.name, f"{source}: weight file") for file in files]


def _convert_shards(weight_files: list[Path], output_dir: Path, report: ConversionReport,
                    stock_key_prefixes: tuple[str, ...]) -> dict[str, str]:
    """Rewrite each shard with mapped keys; returns the weight map (key -> output file name)."""
    index: dict[str, str] = {}
    for shard in weight_files:
        tensors = {}
        with safe_open(shard, framework="pt") as reader:
            for key in reader.keys():
                new_key, tensor = _convert_tensor(key, reader.get_tensor(key), report, stock_key_prefixes)
                if new_key is not None:
                    tensors[new_key] = tensor
        name = "model.safetensors" if len(weight_files) == 1 else shard.name
        save_file(tensors, output_dir / name, metadata={"format": "pt"})
        index.update({key: name for key in tensors})
    return index


def _convert_tensor(key: str, tensor: torch.Tensor, report: ConversionReport, stock_key_prefixes: tuple[str, ...]):
    if key in RELEASE_LOGIT_SCALE_KEYS:
        report.mapped[key] = RELEASE_LOGIT_SCALE_KEYS[key]
        return RELEASE_LOGIT_SCALE_KEYS[key], tensor.float().reshape(())
    if key in RELEASE_TEMPERATURE_KEYS:
        report.mapped[key] = RELEASE_TEMPERATURE_KEYS[key] + " (log(1/tau))"
        return RELEASE_TEMPERATURE_KEYS[key], torch.log(1.0 / tensor.float().reshape(()))
    if key.startswith(UNUSED_RELEASE_PREFIXES):
        report.dropped[key] = "projection head defined but never used by the released code"
        return None, None
    # A family that names no stock key prefixes keeps every key as it is.
    if not stock_key_prefixes or key.startswith(stock_key_prefixes) or key in TEMPERATURE_KEYS:
        report.kept += 1
        return key, tensor
    report.unmapped.append(key)
    return None, None


def _add_missing_temperatures(index: dict[str, str], output_dir: Path, report: ConversionReport,
                              init_temperature: float) -> None:
    missing = [key for key in TEMPERATURE_KEYS if key not in index]
    if not missing:
        return
    value = math.log(1.0 / init_temperature)
    fresh = {key: torch.tensor(value) for key in missing}
    # Appended to the first shard so a single-file checkpoint stays a single file.
    target = output_dir / sorted(set(index.values()))[0]
    with safe_open(target, framework="pt") as reader:
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    tensors.update(fresh)
    save_file(tensors, target, metadata={"format": "pt"})
    for key in missing:
        index[key] = target.name
        report.added[key] = value


def _write_index(index: dict[str, str], output_dir: Path) -> None:
    files = set(index.values())
    if len(files) > 1:
        total = sum((output_dir / name).stat().st_size for name in files)
        payload = {"metadata": {"total_size": total}, "weight_map": dict(sorted(index.items()))}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(payload, indent=2))


def _source_eos_id(source: Path) -> int | None:
    tokenizer_file = source / "tokenizer.json"
    tokenizer_config = source / "tokenizer_config.json"
    if not (tokenizer_file.is_file() and tokenizer_config.is_file()):
        return None
    eos = json.loads(tokenizer_config.read_text()).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    for token in json.loads(tokenizer_file.read_text()).get("added_tokens", []):
        if token["content"] == eos:
            return token["id"]
    return json.loads(tokenizer_file.read_text())["model"]["vocab"].get(eos)


def _write_config(config_dict: dict, source: Path, output_dir: Path, summary_token_id: int | None,
                  init_temperature: float, family) -> None:
    config_dict = dict(config_dict)
    for key in ("model_type", "auto_map", "architectures", "transformers_version"):
        config_dict.pop(key, None)
    if summary_token_id is None:
        summary_token_id = _source_eos_id(source)
    if summary_token_id is None:
        summary_token_id = config_dict.get("text_config", {}).get("eos_token_id")
        logger.warning("no tokenizer in %s: summary token = text_config.eos_token_id (%s)", source, summary_token_id)
    config_dict.update(summary_token_id=summary_token_id, init_temperature=init_temperature)
    config = family.config(**config_dict)
    config.architectures = [family.model.__name__]
    config.auto_map = {
        "AutoConfig": _class_reference(family.config),
        "AutoModelForImageTextToText": _class_reference(family.model),
    }
    config.save_pretrained(output_dir)


def _class_reference(cls) -> str:
    """``module_file.ClassName`` as ``auto_map`` names a class in the checkpoint's code files."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _copy_processor_files(source: Path, output_dir: Path, family) -> None:
    """Carry the tokenizer and image processor over, and point the processor at the family's Finedefics one."""
    copied = [name for name in PROCESSOR_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copy2(source / name, output_dir / name)
    if not copied:
        logger.warning("%s has no tokenizer or processor files; add them before loading with AutoProcessor", source)
        return
    processor_config = output_dir / "processor_config.json"
    payload = json.loads(processor_config.read_text()) if processor_config.is_file() else {}
    payload["processor_class"] = family.processor.__name__
    payload["auto_map"] = {"AutoProcessor": _class_reference(family.processor)}
    processor_config.write_text(json.dumps(payload, indent=2))


def model_code_files(family) -> list[str]:
    """The code files a Finedefics checkpoint of ``family`` ships for ``trust_remote_code`` (``Family.code_files``):
    the files every family builds on (configuration, processing, ``alignment.py``) and the family's own model file,
    plus, for the families other than Idefics2, the mechanism they share (``multimodal.py``)."""
    return list(family.code_files)


def _copy_model_code(output_dir: Path, family) -> None:
    import modeling_finedefics

    package_dir = Path(modeling_finedefics.__file__).parent
    for name in model_code_files(family):
        shutil.copy2(package_dir / name, output_dir / name)
