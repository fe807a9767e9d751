"""Export a Finedefics checkpoint as its stock family's checkpoint, for serving engines that load no remote code.

    report = export_stock("runs/qwen/stage2/final", "exports/qwen-stock")

The inverse of ``finedefics convert`` (``convert.py``): the Finedefics checkpoint (or a LoRA adapter folder, merged
first as training merges it) is loaded with the installed Finedefics classes, never with code from the folder;
its weights go into the family's stock class (``Family.stock_model``, built on the meta device and given the
same tensors, so nothing is copied) and are saved by that class, so the key layout is the one transformers and the
serving engines read for it. The config is the family's stock config (``Family.stock_config_of``): stock
``model_type`` and architecture, no ``auto_map``. The processor files are written by the Finedefics processor
and point at the stock processor class (``Family.stock_processor``); the chat template and generation config
come along.

What the stock class has no place for (the learnable temperatures, projection heads, summary-token and
object-noun settings) is left out, and every such parameter and setting is listed in ``export_report.json``
and the folder's README.md: the export generates text as the Finedefics checkpoint does, but cannot
``classify`` or give embeddings.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoints import check_output_dir, read_checkpoint_config
from .convert import PROCESSOR_FILES

logger = logging.getLogger(__name__)

REPORT_FILE = "export_report.json"
CAN = ("text generation from images and text (transformers generate, vLLM, SGLang, TGI): the same logits and "
       "greedy tokens as the Finedefics checkpoint",)
CANNOT = ("classify (zero-shot recognition by embedding similarity): the learned temperatures are left out",
          "image / text embeddings (get_embeddings, the evaluation's embedding mode): the stock class has no "
          "summary-token pooling or projection heads",
          "further Finedefics training with the learned temperatures: train from the Finedefics checkpoint")


@dataclass
class ExportReport:
    """What the export wrote and every parameter and setting of the Finedefics checkpoint it left out."""

    source: str
    family: str
    stock_model_type: str
    architecture: str
    merged_adapter_base: str | None = None  # the base a LoRA adapter folder was merged into, if it was one
    left_out_parameters: dict[str, list[int]] = field(default_factory=dict)  # name -> shape
    left_out_settings: dict[str, object] = field(default_factory=dict)  # config field -> value
    can: tuple[str, ...] = CAN
    cannot: tuple[str, ...] = CANNOT

    def summary(self) -> str:
        merged = f" (LoRA adapter merged into {self.merged_adapter_base})" if self.merged_adapter_base else ""
        lines = [f"exported {self.source}{merged} as a stock {self.stock_model_type} checkpoint "
                 f"({self.architecture})"]
        lines += [f"  left out parameter {name} {tuple(shape)}" for name, shape in self.left_out_parameters.items()]
        lines += [f"  left out setting   {name} = {value!r}" for name, value in self.left_out_settings.items()]
        return "\n".join(lines)


def export_stock(checkpoint: str | Path, output_dir: str | Path, overwrite: bool = False) -> ExportReport:
    """Write ``checkpoint`` (a Finedefics checkpoint or LoRA adapter folder) as a stock checkpoint in ``output_dir``.

    ``output_dir`` must be empty or new, unless ``overwrite`` (its contents are then replaced).
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    _check_folders(checkpoint, output_dir, overwrite)
    model, processor, adapter_base = load_finedefics_checkpoint(checkpoint)
    from modeling_finedefics.families import family_of

    family = family_of(model)
    stock_config, left_out_settings = family.stock_config_of(model.config)
    report = ExportReport(source=str(checkpoint), family=family.name, stock_model_type=family.stock_model_type,
                          architecture=family.stock_model.__name__, merged_adapter_base=adapter_base,
                          left_out_settings=left_out_settings)
    stock_model = stock_model_with_weights(family, stock_config, model, report)
    _empty_output(output_dir)
    stock_model.save_pretrained(output_dir, safe_serialization=True)
    write_stock_processor(processor, family, output_dir)
    (output_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    (output_dir / "README.md").write_text(model_card(report), encoding="utf-8")
    logger.info("exported %s -> %s (%s)", checkpoint, output_dir, family.stock_model_type)
    return report


# ----------------------------------------------------------------------------- checks
def _check_folders(checkpoint: Path, output_dir: Path, overwrite: bool) -> None:
    """Refuse a missing checkpoint and an output folder that holds files or would overlap the checkpoint."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist" if not checkpoint.exists()
                                else f"{checkpoint} is a file; expected a checkpoint folder")
    check_output_dir(output_dir)
    source, target = checkpoint.resolve(), output_dir.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise ValueError(f"output folder {output_dir} must lie outside the checkpoint folder {checkpoint} "
                         "(and not contain it)")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"output folder {output_dir} is not empty: choose a new folder or pass --overwrite")


def _empty_output(output_dir: Path) -> None:
    """An empty output folder: stale shards of an earlier export must not sit beside the new weights."""
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


def finedefics_model_types() -> tuple[str, ...]:
    from modeling_finedefics.families import FAMILIES

    return tuple(family.model_type for family in FAMILIES.values())


# ----------------------------------------------------------------------------- loading
def load_finedefics_checkpoint(checkpoint: Path):
    """``(model, processor, adapter base or None)``, with the installed Finedefics classes in float32 or the
    checkpoint's dtype; a LoRA adapter folder is merged into its base as training merges it."""
    if (checkpoint / "adapter_config.json").is_file():
        from finedefics_eval.loading import load_adapter_checkpoint

        return load_adapter_checkpoint(checkpoint)
    from modeling_finedefics.families import family_for_model_type

    model_type = read_checkpoint_config(checkpoint, supported=None)["model_type"]
    if model_type not in finedefics_model_types():
        raise ValueError(f"{checkpoint} is not a Finedefics checkpoint (model_type {model_type!r}; a Finedefics one "
                         f"is one of {', '.join(map(repr, finedefics_model_types()))}): a stock checkpoint needs no "
                         "export")
    family = family_for_model_type(model_type)
    model = family.model.from_pretrained(str(checkpoint), dtype="auto")
    return model.eval(), family.load_processor(str(checkpoint)), None


# ----------------------------------------------------------------------------- the stock model
def stock_model_with_weights(family, stock_config, model, report: ExportReport):
    """The family's stock class holding ``model``'s tensors (shared, not copied); what it has no place for is
    recorded in ``report.left_out_parameters``."""
    with torch.device("meta"):  # the tensors are assigned below: no second copy of an 8B model
        stock_model = family.stock_model(stock_config)
    state = model.state_dict()
    stock_keys = set(stock_model.state_dict())
    missing = sorted(stock_keys - set(state))
    if missing:
        raise ValueError(f"the Finedefics {family.name} model lacks parameters its stock class has: {missing[:5]}")
    report.left_out_parameters = {key: list(state[key].shape) for key in sorted(set(state) - stock_keys)}
    stock_model.load_state_dict({key: state[key] for key in stock_keys}, strict=True, assign=True)
    _real_buffers(stock_model, model)
    stock_model.generation_config = model.generation_config
    return stock_model.eval()


def _real_buffers(stock_model, model) -> None:
    """Non-persistent buffers (rotary frequencies) are not in the state dict: take them from the loaded model,
    whose module tree is the stock one plus the alignment modules."""
    buffers = dict(model.named_buffers())
    for name, buffer in list(stock_model.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            module = stock_model.get_submodule(module_name)
            module._buffers[buffer_name] = buffers[name]


# ----------------------------------------------------------------------------- processor
def write_stock_processor(processor, family, output_dir: Path) -> None:
    """The processor, tokenizer and chat template files, naming the stock processor class and no remote code."""
    with tempfile.TemporaryDirectory() as saved:
        processor.save_pretrained(saved)  # also copies the Finedefics processor's code files: not taken
        for name in PROCESSOR_FILES:
            source = Path(saved) / name
            if not source.is_file() or name == "generation_config.json":
                continue
            if name.endswith(".json") and name != "tokenizer.json":
                payload = _as_stock(json.loads(source.read_text(encoding="utf-8")), family.stock_processor.__name__)
                (output_dir / name).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
            else:
                shutil.copy2(source, output_dir / name)


def _as_stock(payload, stock_processor: str):
    """``payload`` without ``auto_map`` anywhere and with ``processor_class`` the stock processor's name."""
    if isinstance(payload, dict):
        payload = {key: _as_stock(value, stock_processor) for key, value in payload.items() if key != "auto_map"}
        if "processor_class" in payload:
            payload["processor_class"] = stock_processor
    return payload


# ----------------------------------------------------------------------------- model card
def model_card(report: ExportReport) -> str:
    """The README.md of the export: what it is, how to load and serve it, what it can and cannot do."""
    can = "\n".join(f"- {line}" for line in report.can)
    cannot = "\n".join(f"- {line}" for line in report.cannot)
    parameters = "\n".join(f"- `{name}` {tuple(shape)}" for name, shape in report.left_out_parameters.items())
    settings = "\n".join(f"- `{name}` = `{value!r}`" for name, value in report.left_out_settings.items())
    merged = f" (a LoRA adapter merged into `{report.merged_adapter_base}`)" if report.merged_adapter_base else ""
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- finedefics
- {report.stock_model_type}
---

# Stock {report.stock_model_type} export of a Finedefics checkpoint

Exported by `finedefics export --stock` from `{report.source}`{merged}: a plain `{report.architecture}`
checkpoint (model_type `{report.stock_model_type}`, no `auto_map`, no remote code, safetensors weights), with the
stock processor, chat template and generation config.

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("PATH")  # no trust_remote_code
processor = AutoProcessor.from_pretrained("PATH")
```

Serving (OpenAI-compatible endpoint): `vllm serve PATH`, or
`python -m sglang.launch_server --model-path PATH`.

## What it can do
{can}

## What it cannot do
{cannot}

## Left out (listed in `{REPORT_FILE}` too)
Parameters:
{parameters or "- none"}

Settings:
{settings or "- none"}
"""


__all__ = ["ExportReport", "export_stock", "load_finedefics_checkpoint", "model_card", "stock_model_with_weights",
           "write_stock_processor"]
