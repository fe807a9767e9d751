"""Plan a training run without running it: ``finedefics train --config recipe.yaml --dry-run``.

The configured model is built on the meta device from its config alone (a local folder's, or the
shipped config of a known Hub model such as ``HuggingFaceM4/idefics2-8b``: nothing is downloaded),
the recipe's tuning is applied as a real run applies it (PEFT's own LoRA wrapping, the recipe's
target regex, ``modules_to_save``, QLoRA's 4-bit choice of layers), and a per-device memory estimate
is printed: weights, gradients, optimizer state and activations for the recipe's batch.

Activations are not guessed from a formula: one layer of each kind (decoder layer, vision layer,
connector) is built at the model's real width on the CPU, run forward on a few tokens with the
recipe's dtype and trainability, and the tensors autograd keeps for backward are counted (each
storage once, parameters excluded); the count is extrapolated to the step's token count from two or
three sizes. What the step holds follows the recipe: with activation checkpointing each layer keeps
its input and one layer at a time is recomputed; without, every layer keeps everything.
Every model family is planned (``modeling_finedefics.families``): its Finedefics class is built from the
config, the vision tower / projector / decoder are found under the family's own names, and a step's image
tokens follow the family's processor (Idefics2's resampler and splitting, Idefics3's pixel shuffle and
splitting, Qwen's 2x2 patch merge at an assumed image side, LLaVA's one token per patch).
The estimate leaves out the CUDA context and allocator fragmentation (``OVERHEAD_GIB`` is added for
those) and the data a step reads; ``benchmarks/bench_dry_run.py`` compares it with a measured step.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_MODEL_CONFIGS = Path(__file__).with_name("model_configs")
GPU_SIZES_GIB = (24, 40, 80)
OVERHEAD_GIB = 1.5  # CUDA context, cuBLAS workspaces and allocator fragmentation on one device
GIB = 2**30
# bitsandbytes nf4 with double quantisation: 4 bits per weight, one 8-bit absmax per 64 weights and
# one float32 second-level scale per 256 absmax values.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass
class StepShape:
    """What one device processes in one optimizer micro-step (per row unless named otherwise)."""

    rows: int
    sub_images: int = 1
    patches: int = 64            # vision tokens per sub-image
    image_tokens: int = 64       # resampled image tokens per sub-image in the decoder
    text_tokens: int = 64        # text tokens per row in the LM pass
    contrastive_texts: float = 0  # texts per row in stage I's embedding pass (descriptions, names, negatives)
    contrastive_text_tokens: int = 24

    @property
    def lm_tokens(self) -> int:
        return self.sub_images * (self.image_tokens + 2) + self.text_tokens

    @property
    def embedding_rows(self) -> list[int]:
        """Token count of each row of the batched embedding pass: image summaries, then texts."""
        if not self.contrastive_texts:
            return []
        summary = self.sub_images * self.image_tokens + 1
        return [summary] * self.rows + [self.contrastive_text_tokens] * round(self.rows * self.contrastive_texts)


@dataclass
class Plan:
    """The dry run's findings; ``str(plan)`` is the printed report."""

    model: str
    stage: int
    tuning: str
    dtype: str
    parameters: dict[str, list[int]]          # part -> [total, trainable]
    lora_modules: dict[str, int]              # module pattern -> count
    full_precision: list[str]
    saved_with_adapter: list[str]
    shape: StepShape
    memory_gib: dict[str, float]
    assumptions: list[str] = field(default_factory=list)
    engine: str | None = None                 # the engine's label when one was planned for (ZeRO-3, FSDP2, ...)
    host_gib: dict[str, float] = field(default_factory=dict)  # per process, in host memory (CPU offload)

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())

    def fits(self) -> dict[int, bool]:
        return {size: self.total_gib <= size for size in GPU_SIZES_GIB}

    def __str__(self) -> str:
        lines = [f"dry run, stage {self.stage}: {self.model} ({self.tuning}, {self.dtype}); nothing was trained", "",
                 "parameters by part (trainable / total):"]
        for part, (total, trainable) in self.parameters.items():
            lines.append(f"  {part:<22} {trainable:>15,} / {total:>15,}")
        if self.lora_modules:
            lines.append(f"LoRA on {sum(self.lora_modules.values())} modules:")
            lines += [f"  {count:>4} x {pattern}" for pattern, count in self.lora_modules.items()]
        lines.append("full precision (float32): " + (", ".join(self.full_precision) or "-"))
        lines.append("saved with the adapter: " + (", ".join(self.saved_with_adapter) or "- (full weights are saved)"))
        shape = self.shape
        lines += ["",
                  f"per-device step: {shape.rows} rows x {shape.sub_images} sub-image(s) of {shape.patches} patches; "
                      f"{shape.lm_tokens} decoder tokens per row"
                      + (f"; embedding pass {len(shape.embedding_rows)} rows" if shape.embedding_rows else ""),
                  "memory estimate per device (GiB):"]
        if self.engine:
            lines.insert(-1, f"engine: {self.engine}")
        lines += [f"  {name:<34} {value:8.2f}" for name, value in self.memory_gib.items()]
        lines.append(f"  {'total':<34} {self.total_gib:8.2f}")
        lines.append("fits on: " + ", ".join(f"{size} GB {'yes' if ok else 'NO'}" for size, ok in self.fits().items()))
        if self.host_gib:
            lines.append("offloaded to host memory, per process (GiB): " + ", ".join(
                f"{name} {value:.2f}" for name, value in self.host_gib.items())
                + f"; total {sum(self.host_gib.values()):.2f}")
        lines += ["", "assumptions:"] + [f"  - {text}" for text in self.assumptions]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- model
def known_configs() -> dict[str, Path]:
    """Hub id -> the config shipped for it (each family's ``shipped_configs``, written from the published configs,
    model_configs/README.md): planned without a download."""
    from modeling_finedefics.families import FAMILIES

    return {hub_id: _MODEL_CONFIGS / name for family in FAMILIES.values()
            for hub_id, name in family.shipped_configs.items()}


def plan_config(path: str, trust_remote_code: bool = False):
    """(Finedefics config of the model's family, processor numbers) from a local folder, the Hub cache, or a
    shipped config."""
    from transformers import AutoConfig

    from modeling_finedefics.families import family_for_model_type

    shipped_configs = known_configs()
    if path in shipped_configs and not os.path.isdir(path):
        shipped = json.loads(shipped_configs[path].read_text())
        stock_config = family_for_model_type(shipped["config"]["model_type"]).stock_config
        config, processor = stock_config(**shipped["config"]), shipped["processor"]
    elif os.path.isdir(path):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor = _local_processor_numbers(Path(path))
    else:
        known = ", ".join(shipped_configs)
        raise ValueError(f"--dry-run needs the model's config: {path!r} is not a local folder nor a model with a "
                         f"shipped config ({known})")
    family = family_for_model_type(config.model_type)
    if config.model_type != family.model_type:
        config = family.finedefics_config(config, processor.get("eos_token_id"))
    return config, processor


def config_family(config):
    """The ``modeling_finedefics.families.Family`` of a Finedefics config (``family_of_config``)."""
    from modeling_finedefics.families import family_of_config

    return family_of_config(config)


def _local_processor_numbers(folder: Path) -> dict:
    numbers = {"do_image_splitting": False, "image_seq_len": 64, "longest_edge": None}
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            values = json.loads((folder / name).read_text())
            numbers["do_image_splitting"] = values.get("do_image_splitting", numbers["do_image_splitting"])
            numbers["image_seq_len"] = values.get("image_seq_len", numbers["image_seq_len"])
            numbers["longest_edge"] = (values.get("size") or {}).get("longest_edge", numbers["longest_edge"])
            # The other families' image settings (transformers 5 nests the image processor's in processor_config)
            for values in (values, values.get("image_processor") or {}):
                numbers["splitting"] = values.get("do_image_splitting", numbers.get("splitting"))
                numbers["split_longest_edge"] = (values.get("size") or {}).get("longest_edge",
                                                                                numbers.get("split_longest_edge"))
                numbers["max_image_size"] = (values.get("max_image_size") or {}).get(
                    "longest_edge", numbers.get("max_image_size"))
                numbers["max_pixels"] = values.get("max_pixels", numbers.get("max_pixels"))
    return numbers


def build_meta_model(config, model_args, training_args, engine=None):
    """The model as a run would train it, on the meta device: (model, names of 4-bit Linear layers).

    Under a sharding ``engine`` (ZeRO-3, FSDP2) every parameter takes the model's dtype, as the run loads it."""
    from .recipe import NOT_QUANTISED, apply_lora, vision_tower

    dtype = _model_dtype(model_args)
    with torch.device("meta"):
        model = config_family(config).model(config).to(dtype)
    sharded = engine.shards_weights and model_args.tuning != "qlora" if engine is not None else None
    if not sharded:
        model._alignment_modules_to_float32([f"{name}." for name in model._keep_in_fp32_modules_strict])
    quantised = set()
    if model_args.tuning == "qlora":
        quantised = {name for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and not any(skip in name for skip in NOT_QUANTISED)}
        # prepare_model_for_kbit_training casts every weight that stays unquantised to float32.
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[0] not in quantised:
                parameter.data = parameter.data.float()
    if model_args.tuning == "full":
        if model_args.freeze_vision_tower:
            vision_tower(model).requires_grad_(False)
        return model, quantised
    lora_args = copy.copy(model_args)
    lora_args.tuning = "lora"  # PEFT's wrapping; 4-bit layers cannot be built on the meta device
    return apply_lora(model, lora_args, training_args, sharded=sharded), quantised


PARTS = (("multimodal projector", ("visual.merger", "multi_modal_projector")),  # Qwen's merger, LLaVA's MLP
         ("vision tower", ("vision_model", "visual", "vision_tower")), ("perceiver resampler", "perceiver_resampler"),
         ("modality projection", "modality_projection"), ("decoder", ("text_model", "language_model")),
         ("lm_head", "lm_head"),
         ("alignment (temperatures, heads)", ("temperatures", "image_projection", "text_projection")))


def _part(name: str) -> str:
    for part, keys in PARTS:
        if any(key in name for key in ((keys,) if isinstance(keys, str) else keys)):
            return part
    return "other"


def parameter_table(model) -> dict[str, list[int]]:
    table = {part: [0, 0] for part, _ in PARTS}
    for name, parameter in model.named_parameters():
        if ".original_module." in name:
            continue  # PEFT's unused copy of a module it trains
        row = table.setdefault(_part(name), [0, 0])
        row[0] += parameter.numel()
        row[1] += parameter.numel() if parameter.requires_grad else 0
    return {part: row for part, row in table.items() if row[0]}


def lora_modules(model) -> dict[str, int]:
    import re

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
            pattern = re.sub(r"\.\d+\.", ".*.", name.removeprefix("base_model.model."))
            counts[pattern] = counts.get(pattern, 0) + 1
    return counts


# ---------------------------------------------------------------------- memory
def weight_bytes(model, quantised: set[str]) -> float:
    total = 0.0
    for name, parameter in model.named_parameters():
        owner = name.removeprefix("base_model.model.").rsplit(".", 1)[0].replace(".base_layer", "")
        if owner in quantised and name.endswith("weight"):
            total += parameter.numel() * NF4_BYTES_PER_WEIGHT
        else:
            total += parameter.numel() * parameter.element_size()
    return total


def trainable_bytes(model) -> tuple[float, float]:
    """(gradients, AdamW state): one gradient and two moments per trainable element, in its dtype."""
    size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if p.requires_grad)
    return float(size), 2.0 * size


class SavedTensorCounter:
    """Bytes autograd keeps for backward inside the ``with`` block: each storage once, parameters excluded."""

    def __init__(self, parameters=()):
        self.excluded = {p.untyped_storage().data_ptr() for p in parameters}
        self.storages: dict[int, int] = {}

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def _fit(sizes: list[int], measured: list[float]):
    """Exact polynomial through the measured points (linear for two, quadratic for three)."""
    if len(sizes) == 2:
        (x0, x1), (y0, y1) = sizes, measured
        slope = (y1 - y0) / (x1 - x0)
        return lambda x: y0 + slope * (x - x0)
    (x0, x1, x2), (y0, y1, y2) = sizes, measured
    return lambda x: (y0 * (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2))
                      + y1 * (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
                      + y2 * (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1)))


def _materialise(module: torch.nn.Module, dtype) -> torch.nn.Module:
    """A CPU copy of a meta-device module (LoRA wrappers included) with random values, in ``dtype``,
    each parameter trainable exactly as in the planned model."""
    trainable = {name: parameter.requires_grad for name, parameter in module.named_parameters()}
    module = copy.deepcopy(module).to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02)
        for buffer in module.buffers():
            if buffer.is_floating_point():
                buffer.zero_()
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(trainable[name])
    return module.train()


def _saved_bytes(module, make_inputs, sizes) -> callable:
    """Saved bytes of ``module`` as a function of its input length, fitted through ``sizes``."""
    measured = []
    for size in sizes:
        args, kwargs = make_inputs(size)
        with SavedTensorCounter(module.parameters()) as counter:
            module(*args, **kwargs)
        measured.append(counter.bytes)
    return _fit(list(sizes), measured)


def decoder_layer_bytes(model, config, dtype, sizes=(8, 16, 32)):
    """Saved bytes of one decoder layer (as the run trains it: LoRA, dropout) for a row of T tokens."""
    # The decoder's own rotary embedding (Qwen's 3-D mrope takes 1-D text positions on all three axes).
    decoder = _core(model)._decoder()
    layer = _materialise(decoder.layers[0], dtype)
    rotary = type(decoder.rotary_emb)(config=config.text_config)

    def inputs(tokens):
        hidden = torch.randn(1, tokens, config.text_config.hidden_size, dtype=dtype, requires_grad=True)
        positions = torch.arange(tokens)[None]
        return (hidden,), {"position_embeddings": rotary(hidden, positions), "position_ids": positions,
                           "attention_mask": None}

    return _saved_bytes(layer, inputs, sizes)


def vision_layer_bytes(model, config, dtype, sizes=(16, 32, 64)):
    family = config_family(config)
    if not family.plans_trained_vision_tower:
        raise ValueError(f"the dry run cannot estimate a trained {family.name} vision tower's activations (its "
                         "blocks take packed patches with cu_seqlens and 2-D rotary positions); keep "
                         "freeze_vision_tower: true or use LoRA for a plan")
    tower = _core(model)._vision_tower()
    layer = _materialise((tower.encoder if hasattr(tower, "encoder") else tower.vision_model.encoder).layers[0], dtype)

    def inputs(patches):
        return (torch.randn(1, patches, config.vision_config.hidden_size, dtype=dtype, requires_grad=True),), \
            {"attention_mask": None}

    return _saved_bytes(layer, inputs, sizes)


def connector_bytes(model, config, dtype):
    """Saved bytes of the image projector (``Family.projector_probe``: Idefics2's modality projection + perceiver,
    Idefics3's pixel shuffle + linear, Qwen's patch merger, LLaVA's MLP) for one sub-image of P patches."""
    core = _core(model)
    probe = config_family(config).projector_probe(core, config)
    # The vision tower's output joins the graph only when the tower trains.
    tower_trains = any(p.requires_grad for p in core._vision_tower().parameters())
    module = _materialise(probe.module, dtype)

    def inputs(patches):
        return probe.inputs(patches, dtype, tower_trains)

    return _saved_bytes(module, inputs, probe.sizes)


def activation_bytes(model, config, shape: StepShape, model_args, training_args) -> dict[str, float]:
    """Activation memory of one micro-step, by component."""
    dtype = _activation_dtype(model_args)
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    checkpointing = bool(getattr(training_args, "activation_checkpointing", False))
    text = config.text_config
    decoder = decoder_layer_bytes(model, config, dtype)
    rows = [shape.lm_tokens] * shape.rows + shape.embedding_rows
    tokens = sum(rows)
    one_layer = sum(decoder(t) for t in rows)
    if checkpointing:
        # Each layer keeps its input; backward recomputes one layer at a time.
        decoder_total = text.num_hidden_layers * tokens * text.hidden_size * dtype_bytes + one_layer
    else:
        decoder_total = text.num_hidden_layers * one_layer
    # Logits in the model's dtype, their float32 copy for the loss and its gradient.
    logits = shape.lm_tokens * shape.rows * text.vocab_size * (dtype_bytes + 8)
    sub_images = shape.rows * shape.sub_images
    one_sub_image = connector_bytes(model, config, dtype)(shape.patches)
    per_chunk = config_family(config).connector_checkpoint_chunk(sub_images, shape.patches)
    if checkpointing and per_chunk is not None:
        # The connector keeps its inputs and recomputes one chunk of sub-images at a time.
        connector = (sub_images * shape.patches * config.vision_config.hidden_size * dtype_bytes
                     + one_sub_image * per_chunk)
    else:
        connector = one_sub_image * sub_images
    result = {"decoder activations": decoder_total, "logits and LM loss": logits, "connector activations": connector}
    if any(p.requires_grad for p in _core(model)._vision_tower().parameters()):
        vision = vision_layer_bytes(model, config, dtype)(shape.patches) * sub_images
        layers, hidden = config.vision_config.num_hidden_layers, config.vision_config.hidden_size
        result["vision tower activations"] = (
            layers * shape.patches * sub_images * hidden * dtype_bytes + vision if checkpointing else layers * vision)
    return result


def _activation_dtype(model_args):
    if model_args.tuning == "qlora":
        return torch.float32  # prepare_model_for_kbit_training upcasts what flows between the 4-bit layers
    return _model_dtype(model_args)


def _model_dtype(model_args):
    """The recipe's ``torch_dtype``; ``auto`` plans float32 (what a config without a dtype loads in)."""
    from .recipe import _dtype

    dtype = _dtype(model_args.torch_dtype)
    return torch.float32 if dtype == "auto" else dtype


def _core(model):
    """The FinedeficsForConditionalGeneration under PEFT's wrapping."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---------------------------------------------------------------------- engines
def largest_unit_bytes(model) -> float:
    """Bytes of the largest unit a sharding engine gathers whole for compute: one decoder layer, the input
    embeddings or the LM head (their weights in the model's dtype)."""
    core = _core(model)

    def size(module) -> float:
        return float(sum(p.numel() * p.element_size() for p in module.parameters())) if module is not None else 0.0

    return max(size(core._decoder().layers[0]), size(core.get_input_embeddings()), size(core.get_output_embeddings()))


def engine_memory(model, quantised: set[str], engine, mixed_precision: bool) -> tuple[dict[str, float],
                                                                                      dict[str, float]]:
    """(per-device bytes, per-process host bytes) of weights, gradients and optimizer state under ``engine``.

    DeepSpeed keeps float32 master weights, gradients and AdamW moments of every trainable element (beside the
    16-bit weights the model computes with); FSDP2 under mixed precision keeps the trainable parameters themselves
    in float32 (accelerate upcasts them) with float32 gradients and moments; in a float32 model both are plain
    float32. ZeRO-3 and FSDP2 shard all of it over the processes and gather one unit (a decoder layer, the
    embeddings or the LM head) whole for compute, the next one prefetched; CPU offload moves the optimizer side
    (and with ``offload_param`` the weights) to host memory.
    """
    world = engine.world_size
    weights = weight_bytes(model, quantised)
    trainable = [p for p in model.parameters() if p.requires_grad]
    elements = float(sum(p.numel() for p in trainable))
    in_dtype = float(sum(p.numel() * p.element_size() for p in trainable))
    sixteen_bit = in_dtype < 4 * elements
    deepspeed = engine.name.startswith("zero")
    fsdp_upcast = engine.name.startswith("fsdp") and mixed_precision and sixteen_bit
    share = {"weights": world if engine.shards_weights else 1, "gradients": world if engine.shards_gradients else 1,
             "optimizer": world if engine.shards_optimizer else 1}
    device = {}
    device[f"weights{_shard_note(share['weights'])}"] = (
        weights - in_dtype + 4 * elements if fsdp_upcast else weights) / share["weights"]
    if deepspeed and sixteen_bit:
        device[f"float32 master weights{_shard_note(share['optimizer'])}"] = 4 * elements / share["optimizer"]
    float32_side = deepspeed or fsdp_upcast or not sixteen_bit
    device[f"gradients{_shard_note(share['gradients'])}"] = (4 * elements if float32_side else in_dtype) \
        / share["gradients"]
    device[f"optimizer state{_shard_note(share['optimizer'])}"] = (8 * elements if float32_side
                                                                   else 2 * in_dtype) / share["optimizer"]
    if engine.shards_weights:
        device["gathered for compute (2 units)"] = 2 * largest_unit_bytes(model)
    host = {}
    for name in list(device):
        offloaded = (engine.offload_optimizer and name.startswith(("float32 master", "optimizer state"))) or (
            engine.offload_params and name.startswith("weights"))
        if offloaded:
            host[name.split(" (")[0]] = device.pop(name)
    return device, host


def _shard_note(parts: int) -> str:
    return f" (1/{parts} each)" if parts > 1 else ""


def check_engine_memory(model_args, training_args, engine=None, host_memory_bytes: int | None = None) -> None:
    """``engines.check_engine_setup`` with CPU offload checked against this machine's memory (the estimate below)."""
    from .engines import check_engine_setup

    check_engine_setup(model_args, training_args, engine, host_memory_bytes,
                       offload_bytes=lambda chosen: offload_host_bytes(model_args, training_args, chosen))


def offload_host_bytes(model_args, training_args, engine) -> float | None:
    """Host memory one process of ``engine`` offloads into (None when the model's config cannot be read)."""
    try:
        config, _ = plan_config(model_args.model_name_or_path, getattr(training_args, "trust_remote_code", False))
        model, quantised = build_meta_model(config, model_args, training_args, engine)
    except (ValueError, OSError) as error:
        logger.info("offload memory not checked: %s", error)
        return None
    mixed = bool(getattr(training_args, "bf16", False) or getattr(training_args, "fp16", False))
    return float(sum(engine_memory(model, quantised, engine, mixed)[1].values()))


# ---------------------------------------------------------------------- plan
def step_shape(config, processor: dict, training_args, stage: int) -> tuple[StepShape, list[str]]:
    """The step of one device, its images as the family's processor makes them (``Family.plan_images``)."""
    images = config_family(config).plan_images(config, processor)
    negatives = training_args.num_negatives if training_args.use_hard_negatives else 0
    contrastive_texts = 2 * (1 + negatives) if stage == 1 else 0
    shape = StepShape(rows=training_args.per_device_train_batch_size, sub_images=images.sub_images,
                      patches=images.patches, image_tokens=images.image_tokens, contrastive_texts=contrastive_texts)
    assumptions = [
        images.note,
        f"{shape.text_tokens} text tokens per row in the LM pass"
        + (f"; the embedding pass has {contrastive_texts} texts of {shape.contrastive_text_tokens} tokens per row "
           + images.embedding_note if contrastive_texts else ""),
        "AdamW (two moments per trainable element, in its dtype); one process per device (DDP); "
        f"{OVERHEAD_GIB} GiB for the CUDA context and fragmentation",
        "activations measured on one layer of each kind at real width on CPU (sdpa attention), extrapolated",
    ]
    return shape, assumptions


def plan_stage(model_args, training_args, shape: StepShape | None = None, engine=None) -> Plan:
    """The plan of one stage of ``training_args`` (its ``stage``); ``shape`` overrides the assumed batch, ``engine``
    (``engines.Engine``) shards weights, gradients and optimizer state as ZeRO or FSDP2 would."""
    stage = training_args.stage
    config, processor = plan_config(model_args.model_name_or_path, training_args.trust_remote_code)
    model, quantised = build_meta_model(config, model_args, training_args, engine)
    if stage == 2:
        for name, parameter in model.named_parameters():
            if "temperatures." in name:
                parameter.requires_grad_(False)  # stage II does not train them
    assumptions = []
    if shape is None:
        shape, assumptions = step_shape(config, processor, training_args, stage)
    host = {}
    if engine is not None and engine.name not in ("single", "ddp"):
        mixed = bool(training_args.bf16 or training_args.fp16)
        memory, host = engine_memory(model, quantised, engine, mixed)
        assumptions = [text.replace("one process per device (DDP)", f"{engine.label}, {engine.world_size} processes, "
                                    "one per device").replace("AdamW (two moments per trainable element, in its "
                                                              "dtype)", "AdamW (float32 moments)")
                       for text in assumptions]
        assumptions.append("sharded state divided evenly over the processes; 2 units gathered at a time (the one "
                           "computing, the next prefetched); communication buffers not counted")
    else:
        gradients, optimizer = trainable_bytes(model)
        memory = {"weights": weight_bytes(model, quantised), "gradients": gradients, "optimizer state": optimizer}
    memory.update(activation_bytes(model, config, shape, model_args, training_args))
    memory = {name: value / GIB for name, value in memory.items()}
    memory["CUDA context, fragmentation"] = OVERHEAD_GIB
    full_precision = sorted({_part(n) for n, p in model.named_parameters() if p.dtype == torch.float32
                             and ".original_module." not in n})
    saved = [] if model_args.tuning == "full" else ["LoRA weights"] + list(getattr(model.peft_config["default"],
                                                                                   "modules_to_save", None) or [])
    return Plan(model=model_args.model_name_or_path, stage=stage, tuning=model_args.tuning,
                dtype=str(model_args.torch_dtype),
                parameters=parameter_table(model), lora_modules=lora_modules(model), full_precision=full_precision,
                saved_with_adapter=saved, shape=shape, memory_gib=memory,
                assumptions=assumptions,
                engine=f"{engine.label}, {engine.world_size} processes" if engine is not None else None,
                host_gib={name: value / GIB for name, value in host.items()})


def print_plan(model_args, training_args, engine=None) -> Plan:
    """Print the plan of one stage; ``engine`` (``engines.Engine``) plans for a ZeRO / FSDP launch (refused
    tunings are refused here too, as the run would refuse them)."""
    if engine is not None:
        from .engines import check_engine_supports

        check_engine_supports(model_args, engine)
    plan = plan_stage(model_args, training_args, engine=engine)
    print(plan, end="\n\n")
    return plan
