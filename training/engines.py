"""The multi-process engines a run can be launched under, and what each needs from Finedefics.

``accelerate launch --config_file accelerate_configs/<engine>.yaml -m finedefics_cli train ...`` picks one:

- DDP (``multi_gpu.yaml``, ``cpu_two_processes.yaml``): every process holds the whole model;
- DeepSpeed ZeRO-3 (``deepspeed_zero3.yaml``, ``cpu_deepspeed_zero3.yaml``): weights, gradients and optimizer
  state partitioned over the processes;
- FSDP2 (``fsdp2.yaml``, ``cpu_fsdp2.yaml``): the same through torch's ``fully_shard``.

``engine_of`` reads which one from ``accelerate launch``'s environment (or a recipe's ``deepspeed`` / ``fsdp``
fields), ``engine_from_accelerate_config`` from a config file (what ``--dry-run --accelerate-config`` plans for),
and ``check_engine_setup`` refuses what an engine cannot honour before any weight loads (QLoRA under ZeRO-3 or
FSDP2, FSDP v1, CPU offload beyond the host's memory). What accelerate 1.16 and DeepSpeed 0.19 cannot do with
this model on CPU processes, and how it is worked around:

- DeepSpeed is applied only to processes accelerate does not mark CPU, whose process group it counts only when
  told the backend; FSDP it never applies to CPU processes (``adapt_to_cpu_processes``, ``fsdp_on_cpu_processes``);
- DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce (``deepspeed_shm_comm``) at its first
  collective: 1 to 5 minutes of C++ on a 2-core machine, for a kernel that only speeds up CPU all-reduce. It is
  skipped (gloo's all-reduce is used) unless ``FINEDEFICS_DEEPSPEED_SHM_COMM=1`` (``prepare_engine``);
- neither engine can shard a 0-dim parameter: the temperatures, scalars in every checkpoint, are 1-element
  vectors in a model built under ZeRO-3 or trained under FSDP2 (``modeling_finedefics.alignment``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class Engine:
    """How the run's weights, gradients and optimizer state are laid over its processes."""

    name: str                   # "single", "ddp", "zero1", "zero2", "zero3", "fsdp1", "fsdp2"
    world_size: int = 1
    offload_params: bool = False     # parameters kept in host memory between uses
    offload_optimizer: bool = False  # optimizer state (and its step) in host memory

    @property
    def shards_weights(self) -> bool:
        return self.name in ("zero3", "fsdp1", "fsdp2")

    @property
    def shards_gradients(self) -> bool:
        return self.name in ("zero2", "zero3", "fsdp1", "fsdp2")

    @property
    def shards_optimizer(self) -> bool:
        return self.name in ("zero1", "zero2", "zero3", "fsdp1", "fsdp2")

    @property
    def label(self) -> str:
        labels = {"single": "one process", "ddp": "DDP", "zero1": "DeepSpeed ZeRO-1", "zero2": "DeepSpeed ZeRO-2",
                  "zero3": "DeepSpeed ZeRO-3", "fsdp1": "FSDP (v1)", "fsdp2": "FSDP2"}
        offload = [what for what, on in (("parameters", self.offload_params),
                                         ("optimizer state", self.offload_optimizer)) if on]
        return labels[self.name] + (f" with {' and '.join(offload)} offloaded to CPU" if offload else "")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def _world_size(default: int = 1) -> int:
    return int(os.environ.get("WORLD_SIZE") or default)


def _deepspeed_config(training_args) -> dict | None:
    config = getattr(training_args, "deepspeed", None)
    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text())
    return config if isinstance(config, dict) else None


def engine_of(training_args=None, world_size: int | None = None) -> Engine:
    """The engine of a run: the recipe's ``deepspeed`` / ``fsdp`` fields, else ``accelerate launch``'s environment.

    ``world_size`` overrides the launch's (a dry run plans for the config file's ``num_processes``).
    """
    world = world_size or _world_size()
    config = _deepspeed_config(training_args)
    if config is not None:
        zero = config.get("zero_optimization") or {}
        stage = zero.get("stage")
        stage = int(stage) if stage not in (None, "auto") else 0
        return Engine(f"zero{stage}" if stage else "ddp", world,
                      offload_params=(zero.get("offload_param") or {}).get("device") in ("cpu", "nvme"),
                      offload_optimizer=(zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme"))
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)
        return Engine(f"zero{stage}" if stage else "ddp", world,
                      offload_params=os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE") in ("cpu", "nvme"),
                      offload_optimizer=os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")
                      in ("cpu", "nvme"))
    fsdp = getattr(training_args, "fsdp", None)
    fsdp_config = getattr(training_args, "fsdp_config", None) or {}
    if _flag("ACCELERATE_USE_FSDP") or fsdp:
        version = int(os.environ.get("FSDP_VERSION") or fsdp_config.get("version") or 1)
        offload = _flag("FSDP_OFFLOAD_PARAMS") or bool(fsdp_config.get("offload_params")) or (
            isinstance(fsdp, (list, str)) and "offload" in (fsdp if isinstance(fsdp, list) else fsdp.split()))
        return Engine(f"fsdp{version}", world, offload_params=offload, offload_optimizer=offload)
    return Engine("ddp" if world > 1 else "single", world)


def engine_from_accelerate_config(path: str | os.PathLike) -> Engine:
    """The engine an ``accelerate launch --config_file PATH`` run would use (what ``--dry-run`` plans for)."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"accelerate config {path}: cannot be read ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"accelerate config {path}: not a mapping of settings")
    kind = str(config.get("distributed_type", "NO")).upper()
    world = int(config.get("num_processes") or 1)
    if kind == "MULTI_CPU":
        world = 1  # accelerate launch starts one process for it (without mpirun)
    if kind == "DEEPSPEED":
        ds = config.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            return engine_of(type("Args", (), {"deepspeed": ds["deepspeed_config_file"]})(), world_size=world)
        stage = int(ds.get("zero_stage") or 0)
        return Engine(f"zero{stage}" if stage else "ddp", world,
                      offload_params=ds.get("offload_param_device") in ("cpu", "nvme"),
                      offload_optimizer=ds.get("offload_optimizer_device") in ("cpu", "nvme"))
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        offload = bool(fsdp.get("fsdp_offload_params"))
        return Engine(f"fsdp{int(fsdp.get('fsdp_version') or 1)}", world, offload_params=offload,
                      offload_optimizer=offload)
    if kind in ("NO", "") or world == 1:
        return Engine("single", 1)
    return Engine("ddp", world)


# ------------------------------------------------------------------------------------------- refusals
QLORA_ENGINE_HELP = ("launch with accelerate_configs/multi_gpu.yaml (DDP; QLoRA's 4-bit base is small enough to "
                     "replicate), or keep the {config} config with tuning: lora (bf16 base) or tuning: full")


def check_engine_setup(model_args, training_args, engine: Engine | None = None,
                       host_memory_bytes: int | None = None, offload_bytes=None) -> None:
    """Refuse, before any weight loads, what the launch's engine cannot honour (named, with the config to use).

    ``offload_bytes(engine)``: the host memory one process offloads into (``dry_run.offload_host_bytes``, which
    builds the model on the meta device; passed in because the dry run sits above this module). Without it, CPU
    offload is not checked against this machine's memory: ``finedefics train`` and ``two-stage`` pass it
    (``dry_run.check_engine_memory``); ``run_stage`` alone checks the refusals only."""
    engine = engine or engine_of(training_args)
    check_engine_supports(model_args, engine)
    if (engine.offload_params or engine.offload_optimizer) and offload_bytes is not None:
        _check_offload_memory(engine, offload_bytes(engine), host_memory_bytes)


def check_engine_supports(model_args, engine: Engine) -> None:
    """The engine can train the recipe's tuning at all (QLoRA under ZeRO-3 or FSDP cannot; FSDP v1 is not used)."""
    if model_args.tuning == "qlora" and engine.name == "zero3":
        raise ValueError("tuning: qlora cannot run under DeepSpeed ZeRO-3 (bitsandbytes' 4-bit weights cannot be "
                         "partitioned): " + QLORA_ENGINE_HELP.format(config="deepspeed_zero3.yaml"))
    if model_args.tuning == "qlora" and engine.name.startswith("fsdp"):
        raise ValueError(f"tuning: qlora is not supported under {engine.label} here (FSDP shards bitsandbytes' "
                         "packed 4-bit weights only with bnb_4bit_quant_storage set to the compute dtype and a "
                         "uniform dtype across the model, which this package's float32 temperatures and heads "
                         "break): " + QLORA_ENGINE_HELP.format(config="fsdp2.yaml"))
    if engine.name == "fsdp1":
        raise ValueError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                         "(accelerate_configs/fsdp2.yaml)")


def _check_offload_memory(engine: Engine, needed: float | None, host_memory_bytes: int | None) -> None:
    """CPU offload keeps the offloaded state of every process of this machine in its RAM: refuse when it cannot."""
    local = _local_world_size(engine)
    if needed is None:
        return  # the model's size is unknown without its config: nothing to check up front
    needed *= local
    available = host_memory_bytes if host_memory_bytes is not None else _available_host_memory()
    if available is not None and needed > available:
        raise ValueError(f"{engine.label}: the offloaded state of this machine's {local} process(es) needs about "
                         f"{needed / GIB:.1f} GiB of host memory and {available / GIB:.1f} GiB is available; offload "
                         "less (offload_param_device: none first), use more machines, or tuning: lora")


def _local_world_size(engine: Engine) -> int:
    """The processes of this machine (each offloads its own share into this machine's memory)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or engine.world_size)


def _available_host_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------- CPU processes
def launched_engine() -> str | None:
    """``deepspeed`` or ``fsdp`` when ``accelerate launch`` started this process for that engine, else None."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def processes_have_accelerator() -> bool:
    """Whether this process has a GPU (or another torch accelerator) to run on."""
    try:
        return torch.accelerator.current_accelerator() is not None
    except RuntimeError:  # some CPU-only builds raise instead of returning None
        return False


def adapt_to_cpu_processes(config) -> None:
    """A training config made fit for a DeepSpeed or FSDP launch on CPU processes (before its devices are set up).

    accelerate 1.16 applies DeepSpeed only to processes it does not mark CPU, and without an accelerator it
    counts their process group only when told the backend: under DeepSpeed ``use_cpu`` is turned off (the
    processes run on the CPU all the same) and ``ddp_backend`` defaults to gloo. FSDP it never applies to CPU
    processes: ``use_cpu`` is turned on (a gloo group accelerate counts) and ``fsdp_on_cpu_processes`` adds FSDP
    when the trainer is built. Mixed precision does not apply there: ``bf16`` left unset is off, ``bf16: true``
    is refused.
    """
    engine = launched_engine()
    if engine is None or processes_have_accelerator():
        return
    if config.bf16 or config.fp16:
        raise ValueError(f"{'bf16' if config.bf16 else 'fp16'}: true cannot be honoured under a {engine} launch on "
                         "CPU processes (the CPU configs, accelerate_configs/cpu_*.yaml, train in the model's dtype): "
                         "set it to false, and torch_dtype: bfloat16 for bf16 weights")
    config.bf16 = False
    if engine == "deepspeed" and config.use_cpu:
        logger.info("DeepSpeed on CPU processes: use_cpu is turned off (accelerate applies DeepSpeed only to "
                    "processes it does not mark CPU); they run on the CPU all the same")
        config.use_cpu = False
    elif engine == "fsdp":
        config.use_cpu = True  # a gloo process group that accelerate counts (fsdp_on_cpu_processes adds FSDP)
    if "LOCAL_RANK" in os.environ:  # one of the launch's processes (not a single process with the variables set)
        config.ddp_backend = config.ddp_backend or "gloo"


def fsdp_on_cpu_processes(accelerator) -> bool:
    """Make an FSDP launch on CPU processes an FSDP run (True when this changed the accelerator's state).

    accelerate 1.16 turns FSDP on only for GPU-like process groups; on CPU processes (gloo) it leaves the state
    without its FSDP plugin, and the run would train one unsynchronised model per process. The plugin is made
    from the launch's environment (``FSDP_*``, as accelerate does) and the state marked FSDP, as on GPUs.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if launched_engine() != "fsdp" or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    from accelerate.state import PartialState

    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = DistributedType.FSDP
    # As AcceleratorState records its type (every later AcceleratorState() copies PartialState's over its own).
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


# --------------------------------------------------------------------------------- preparation
def prepare_engine(training_args=None) -> None:
    """What a DeepSpeed launch needs before its process group starts (see the module's docstring); a no-op for
    every other engine."""
    if not (_flag("ACCELERATE_USE_DEEPSPEED") or _deepspeed_config(training_args) is not None):
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ValueError("this launch uses DeepSpeed, which is not installed: pip install deepspeed") from None
    _skip_cpu_shm_comm_build()


def _skip_cpu_shm_comm_build() -> None:
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu" or os.environ.get("FINEDEFICS_DEEPSPEED_SHM_COMM") == "1":
        return
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch
    if getattr(ds_torch.build_shm_op, "_finedefics", False):
        return

    def no_shm_op():
        return None

    no_shm_op._finedefics = True
    ds_torch.build_shm_op = no_shm_op
    logger.info("DeepSpeed on CPU: its shared-memory all-reduce kernel is not compiled (gloo's is used); "
                "FINEDEFICS_DEEPSPEED_SHM_COMM=1 compiles it")
