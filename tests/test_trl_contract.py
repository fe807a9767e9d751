"""What FinedeficsTrainer relies on inside TRL, beyond its public API: a change in TRL fails here, by name, rather
than as a silently missing loss term in the logs."""

from conftest import toy_rows
from datasets import Dataset

from finedefics_training.config import FinedeficsTrainingConfig
from finedefics_training.trainer import FinedeficsTrainer


def test_a_recorded_metric_reaches_the_step_log_and_is_cleared(micro_model, tiny_processor, tmp_path):
    """``_record_metric`` writes TRL's private ``_metrics``, which ``SFTTrainer.log`` averages into the step's
    log and then clears: the route every contrastive term and temperature takes to the logs."""
    args = FinedeficsTrainingConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[])
    trainer = FinedeficsTrainer(model=micro_model, args=args, processing_class=tiny_processor,
                                train_dataset=Dataset.from_list(toy_rows(4)))
    micro_model.train()
    trainer._record_metric("train", "loss_probe", 1.0)
    trainer._record_metric("train", "loss_probe", 2.0)
    trainer.log({"loss": 0.5})
    assert trainer.state.log_history[-1]["loss_probe"] == 1.5
    trainer.log({"loss": 0.5})
    assert "loss_probe" not in trainer.state.log_history[-1]  # each step logs its own values
