"""Finedefics data: the questions, the training record, readers, negatives and the synthetic benchmark.

Installed as ``finedefics_data`` (the repository folder is ``data/``). Training and evaluation both
build on it and it imports neither, so the dependency runs one way::

    modeling_finedefics  <-  finedefics_data  <-  finedefics_eval  <-  finedefics_training

- ``prompts``: every question Finedefics asks a model, in training and evaluation (the one source).
- ``names``: how category names are normalised and matched (open-set answers).
- ``schema``: the training record, its validation and the shared reader bookkeeping.
- ``readers``, ``describe``, ``kinds``, ``negatives``: turning a dataset into training records.
- ``describe_run`` (with ``describe_input``, ``describe_models``, ``answer_cache``): ``finedefics data describe``,
  model-made descriptions for a labelled image folder, batched and resumable.
- ``synth``: the synthetic fine-grained benchmark of the demo.
"""
