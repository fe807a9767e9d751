"""The packages' top-level names, as ``from trl import SFTTrainer``: importable from the package itself, the same
objects as in their modules, and loaded only when asked for (importing the package stays light)."""

import subprocess
import sys


def test_the_trainer_and_its_config_come_from_the_package():
    from finedefics_training import FinedeficsTrainer, FinedeficsTrainingConfig
    from finedefics_training.config import FinedeficsTrainingConfig as config_module_class
    from finedefics_training.trainer import FinedeficsTrainer as trainer_module_class

    assert FinedeficsTrainer is trainer_module_class and FinedeficsTrainingConfig is config_module_class


def test_importing_the_package_loads_no_torch_until_a_class_is_used():
    probe = ("import sys, finedefics_training; light = 'torch' not in sys.modules; "
             "finedefics_training.FinedeficsTrainingConfig; print(light, 'trl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
