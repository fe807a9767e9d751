"""DeepSpeed ZeRO-3 and FSDP2 for real, on two CPU processes (gloo), and what they refuse.

Each engine trains stage I of the micro model through ``accelerate launch --config_file
training/accelerate_configs/cpu_<engine>.yaml`` three times: a full-tuning run killed after step 3 (SIGKILL, no
cleanup), ``finedefics train`` resuming it from the engine's own checkpoint of step 2 to the end, and a LoRA run.
Their first step's loss equals the 2-process DDP run's (``cpu_two_processes.yaml``, same seed, same batch) and
every saved model is complete (each tensor its full shape, not a shard) and loads with ``from_pretrained``.
Launches cost ~30 s each on a 2-core machine: 7 in all.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TEST_CORPUS, TOY_CATEGORIES, TOY_COLOURS, toy_rows

CONFIGS = REPO_ROOT / "training" / "accelerate_configs"
KILL_WORKER = Path(__file__).with_name("kill_and_resume_worker.py")
# Compared per term: the total and every term of the first step's log.
FIRST_STEP_KEYS = ("loss", "lm_loss", "loss_object_attribute", "loss_attribute_category", "loss_category_category")
ENGINES = {"zero3": "cpu_deepspeed_zero3.yaml", "fsdp2": "cpu_fsdp2.yaml"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: str, target: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/CONFIG TARGET`` (two processes on this machine)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--main_process_port", str(_free_port()), *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def _train(config: str, recipe: Path) -> subprocess.CompletedProcess:
    return _launch(config, ["-m", "finedefics_cli", "train", "--config", str(recipe)], recipe.parent)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The micro checkpoint and toy data of conftest's fixtures, built once for the module's launches."""
    from datasets import Dataset, DatasetDict

    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("engines")
    corpus = TEST_CORPUS + TOY_CATEGORIES + [f"a small bird with {c} feathers" for c in TOY_COLOURS]
    processor = build_tiny_processor(build_tiny_tokenizer(corpus))
    build_tiny_model(processor, preset="micro", seed=0).save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    DatasetDict({"train": Dataset.from_list(toy_rows())}).save_to_disk(str(root / "data"))
    return root


def _recipe(inputs: Path, name: str, **overrides) -> Path:
    """Stage I of the micro model, 2 processes x 4 rows, a checkpoint every 2 steps. ``use_cpu: true`` as every CPU
    recipe has it: the engines' CPU launches adapt it (``engines.adapt_to_cpu_processes``)."""
    values = dict(model_name_or_path=str(inputs / "base"), dataset_dir=str(inputs / "data"),
                  output_dir=str(inputs / name), stage=1, tuning="full", torch_dtype="float32", use_cpu=True,
                  bf16=False, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, num_negatives=2,
                  logging_steps=1, save_strategy="steps", save_steps=2, seed=0, dataloader_num_workers=0,
                  report_to="none", disable_tqdm=True)
    values.update(overrides)
    path = inputs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def ddp_first_step(inputs):
    """The first step's log of the 2-process DDP run (cpu_two_processes.yaml) on the same seed and batch."""
    recipe = _recipe(inputs, "ddp", max_steps=1, save_strategy="no")
    result = _train("cpu_two_processes.yaml", recipe)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world size 2" in result.stderr
    return json.loads((inputs / "ddp" / "log_history.json").read_text())[0]


def _same_first_step(log: dict, reference: dict) -> None:
    assert log["step"] == 1
    for key in FIRST_STEP_KEYS:
        assert log[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key


def _check_complete_and_loadable(final: Path, base: Path, merged_lora: bool = False) -> None:
    """Every tensor of the base, at its full shape (a ZeRO-3 partition or an FSDP shard would be smaller), trained
    ones changed, scalar temperatures; and the folder loads with from_pretrained."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    saved, original = load_file(final / "model.safetensors"), load_file(base / "model.safetensors")
    assert saved.keys() == original.keys()
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in original.items()}
    assert saved["temperatures.object_attribute"].dim() == 0
    name = "model.text_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[name], original[name]), "the trained weights were not saved"
    frozen = "model.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(saved[frozen], original[frozen])
    if merged_lora:
        assert not (final / "adapter_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(final, trust_remote_code=True)
    assert torch.equal(model.state_dict()[name], saved[name])


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_engine_trains_saves_whole_weights_and_resumes_a_killed_run(engine, inputs, ddp_first_step):
    config = ENGINES[engine]
    recipe = _recipe(inputs, f"{engine}-full")
    run = inputs / f"{engine}-full"

    killed = _launch(config, [str(KILL_WORKER), str(recipe), "3"], inputs)
    assert killed.returncode != 0 and "ran step 3" in killed.stdout, killed.stderr[-4000:]
    assert "world size 2" in killed.stderr
    checkpoint = run / "checkpoint-2"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    if engine == "zero3":  # DeepSpeed's own checkpoint: each rank's partition of weights and optimizer state
        shards = sorted(p.name for p in (checkpoint / "global_step2").iterdir())
        assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt" for rank in (0, 1)
                          for kind in ("model", "optim")]
    else:  # torch.distributed.checkpoint: one shard file per rank
        for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (checkpoint / folder).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    _same_first_step(state["log_history"][0], ddp_first_step)

    resumed = _train(config, recipe)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming stage 1 from {checkpoint}" in resumed.stderr
    history = [entry for entry in json.loads((run / "log_history.json").read_text()) if "loss" in entry]
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    assert history[:2] == state["log_history"][:2]  # steps 1 and 2 come from the checkpoint, not a rerun
    _check_complete_and_loadable(run / "final", inputs / "base")


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_engine_trains_lora_and_saves_the_merged_model(engine, inputs, ddp_first_step):
    recipe = _recipe(inputs, f"{engine}-lora", tuning="lora", lora_dropout=0.0, max_steps=1, save_strategy="no")
    result = _train(ENGINES[engine], recipe)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world size 2" in result.stderr
    run = inputs / f"{engine}-lora"
    # LoRA's B starts at zero: the first step's model is the base, as in the DDP run's full tuning.
    _same_first_step(json.loads((run / "log_history.json").read_text())[0], ddp_first_step)
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["final"]  # no gathered adapter left behind
    _check_complete_and_loadable(run / "final", inputs / "base", merged_lora=True)


# ----------------------------------------------------------------------------- refused before any weight loads
@pytest.fixture
def no_weight_loads(monkeypatch):
    """Fails the test if any Finedefics model loads weights."""
    from modeling_finedefics.alignment import FinedeficsAlignmentMixin

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the setting was refused")

    monkeypatch.setattr(FinedeficsAlignmentMixin, "from_pretrained", classmethod(refuse))


def _fsdp_launch_environment(monkeypatch, **extra):
    """What ``accelerate launch --config_file cpu_fsdp2.yaml`` puts in each process's environment."""
    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", **extra}.items():
        monkeypatch.setenv(key, value)


def test_qlora_under_fsdp2_is_refused_naming_the_config_to_use(tmp_path, micro_checkpoint, toy_dataset_dir,
                                                               monkeypatch, no_weight_loads, capsys):
    from finedefics_cli import main

    _fsdp_launch_environment(monkeypatch)
    recipe = _recipe_file(tmp_path, micro_checkpoint, toy_dataset_dir, tuning="qlora")
    assert main(["train", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "tuning: qlora is not supported under FSDP2" in error and "accelerate_configs/multi_gpu.yaml" in error
    assert not (tmp_path / "out").exists()


def test_cpu_offload_without_the_host_memory_is_refused(tmp_path, micro_checkpoint, toy_dataset_dir, monkeypatch,
                                                        no_weight_loads, capsys):
    from finedefics_cli import main
    from finedefics_training import engines

    _fsdp_launch_environment(monkeypatch, FSDP_OFFLOAD_PARAMS="true")
    monkeypatch.setattr(engines, "_available_host_memory", lambda: 1 << 20)  # 1 MiB free
    recipe = _recipe_file(tmp_path, micro_checkpoint, toy_dataset_dir, tuning="full")
    assert main(["train", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "FSDP2 with parameters and optimizer state offloaded to CPU" in error
    assert "GiB of host memory and 0.0 GiB is available" in error


def test_offload_memory_check_counts_every_process_of_the_machine(micro_checkpoint):
    from types import SimpleNamespace

    from finedefics_training.dry_run import check_engine_memory, offload_host_bytes
    from finedefics_training.engines import Engine
    from finedefics_training.recipe import ModelArguments

    model_args = ModelArguments(model_name_or_path=str(micro_checkpoint), tuning="full", torch_dtype="float32")
    args = SimpleNamespace(bf16=False, fp16=False, trust_remote_code=False)
    one = offload_host_bytes(model_args, args, Engine("zero3", 1, offload_optimizer=True))
    two = offload_host_bytes(model_args, args, Engine("zero3", 2, offload_optimizer=True))
    assert one > 0 and two == pytest.approx(one / 2)  # each process offloads its own partition
    engine = Engine("zero3", 2, offload_optimizer=True)
    check_engine_memory(model_args, args, engine, host_memory_bytes=int(2 * two) + 1)
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 with optimizer state offloaded to CPU: the offloaded "
                                         "state of this machine's 2 process"):
        check_engine_memory(model_args, args, engine, host_memory_bytes=int(2 * two) - 1)


def test_mixed_precision_on_cpu_engine_processes_is_refused(monkeypatch):
    from finedefics_training.config import FinedeficsTrainingConfig

    _fsdp_launch_environment(monkeypatch)
    with pytest.raises(ValueError, match="bf16: true cannot be honoured under a fsdp launch on CPU processes"):
        FinedeficsTrainingConfig(output_dir="unused", bf16=True, report_to=[])
    config = FinedeficsTrainingConfig(output_dir="unused", report_to=[])  # bf16 left unset: off
    assert config.bf16 is False and config.use_cpu


def test_fsdp_version_1_is_refused():
    from finedefics_training.engines import Engine, check_engine_supports
    from finedefics_training.recipe import ModelArguments

    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_engine_supports(ModelArguments(tuning="full"), Engine("fsdp1", 8))


def _recipe_file(tmp_path, checkpoint, data, **overrides) -> Path:
    values = dict(model_name_or_path=str(checkpoint), dataset_dir=str(data), output_dir=str(tmp_path / "out"),
                  stage=1, max_steps=1, per_device_train_batch_size=2, report_to="none", bf16=False, use_cpu=True)
    values.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# ----------------------------------------------------------------------------- the engines and the dry run
@pytest.mark.parametrize("config, name, world", [
    ("deepspeed_zero3.yaml", "zero3", 8), ("cpu_deepspeed_zero3.yaml", "zero3", 2), ("fsdp2.yaml", "fsdp2", 8),
    ("cpu_fsdp2.yaml", "fsdp2", 2), ("multi_gpu.yaml", "ddp", 8), ("cpu_two_processes.yaml", "ddp", 2),
])
def test_each_shipped_accelerate_config_is_read_as_its_engine(config, name, world):
    from finedefics_training.engines import engine_from_accelerate_config

    engine = engine_from_accelerate_config(CONFIGS / config)
    assert (engine.name, engine.world_size) == (name, world)
    assert not (engine.offload_params or engine.offload_optimizer)


def test_dry_run_shards_weights_gradients_and_optimizer_state_over_the_processes(micro_checkpoint):
    from finedefics_training.config import FinedeficsTrainingConfig
    from finedefics_training.dry_run import plan_stage
    from finedefics_training.engines import Engine
    from finedefics_training.recipe import ModelArguments

    model_args = ModelArguments(model_name_or_path=str(micro_checkpoint), tuning="full", torch_dtype="float32")
    args = FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[],
                                    per_device_train_batch_size=2)
    ddp = plan_stage(model_args, args).memory_gib
    for engine in (Engine("zero3", 8), Engine("fsdp2", 8)):
        plan = plan_stage(model_args, args, engine=engine)
        memory = plan.memory_gib
        assert memory["weights (1/8 each)"] == pytest.approx(ddp["weights"] / 8)
        assert memory["gradients (1/8 each)"] == pytest.approx(ddp["gradients"] / 8)  # float32: 4 bytes each
        assert memory["optimizer state (1/8 each)"] == pytest.approx(ddp["optimizer state"] / 8)
        assert "float32 master weights (1/8 each)" not in memory  # the weights are float32 already
        assert memory["decoder activations"] == pytest.approx(ddp["decoder activations"])  # not sharded
        assert plan.engine.endswith(", 8 processes")
    assert memory["gathered for compute (2 units)"] > 0
    # ZeRO-2 shards gradients and optimizer state only; offloading the optimizer moves it to host memory.
    zero2 = plan_stage(model_args, args, engine=Engine("zero2", 8, offload_optimizer=True))
    assert zero2.memory_gib["weights"] == pytest.approx(ddp["weights"])
    assert "optimizer state (1/8 each)" not in zero2.memory_gib
    assert zero2.host_gib["optimizer state"] == pytest.approx(ddp["optimizer state"] / 8)
    # bf16 weights under DeepSpeed: float32 master weights, gradients and moments beside them.
    bf16 = plan_stage(ModelArguments(model_name_or_path=str(micro_checkpoint), tuning="full",
                                     torch_dtype="bfloat16"), args, engine=Engine("zero3", 8)).memory_gib
    elements = ddp["gradients"] / 4  # float32 gradients: 4 bytes per trainable element
    assert bf16["float32 master weights (1/8 each)"] == pytest.approx(4 * elements / 8)
    assert bf16["optimizer state (1/8 each)"] == pytest.approx(8 * elements / 8)


def test_dry_run_with_an_accelerate_config_prints_the_sharded_plan(tmp_path, micro_checkpoint, capsys):
    from finedefics_cli import main

    recipe = _recipe_file(tmp_path, micro_checkpoint, tmp_path, tuning="lora")
    assert main(["train", "--config", str(recipe), "--dry-run", "--accelerate-config",
                 str(CONFIGS / "cpu_deepspeed_zero3.yaml")]) == 0
    out = capsys.readouterr().out
    assert "engine: DeepSpeed ZeRO-3, 2 processes" in out and "weights (1/2 each)" in out
    assert main(["train", "--config", str(recipe), "--dry-run", "--tuning", "qlora", "--accelerate-config",
                 str(CONFIGS / "fsdp2.yaml")]) == 2
    assert "tuning: qlora is not supported under FSDP2" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--accelerate-config", str(CONFIGS / "fsdp2.yaml")]) == 2
    assert "--accelerate-config is for --dry-run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the temperatures under sharding
def test_temperatures_held_as_vectors_load_and_save_as_scalars(micro_model):
    from modeling_finedefics.alignment import temperatures_as_scalars

    stored = micro_model.state_dict()
    temperatures = micro_model.temperatures
    temperatures.as_vectors()  # what FSDP2 and ZeRO-3 train
    assert temperatures.object_attribute.shape == (1,)
    assert {k: v.shape for k, v in temperatures().items()} == {"object_attribute": (), "attribute_category": ()}
    micro_model.load_state_dict(stored)  # a checkpoint's scalars load into the vectors
    gathered = temperatures_as_scalars(micro_model.state_dict())
    assert gathered["temperatures.object_attribute"].shape == ()
    assert torch.equal(gathered["temperatures.object_attribute"], stored["temperatures.object_attribute"])
    assert gathered.keys() == stored.keys()
