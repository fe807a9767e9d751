"""Finedefics in lmms-eval 0.7.3: the model ``finedefics`` and fine-grained recognition (FGVR) tasks.

    pip install -e ".[lmms]"
    FINEDEFICS_BENCHMARK=runs/synth lmms-eval --model finedefics --model_args pretrained=CHECKPOINT \\
        --tasks finedefics_data --include_path "$(python -m finedefics_eval.lmms_eval_plugin)" --batch_size 8

The model is registered the way lmms-eval 0.7.3 documents for outside packages: this package declares the
entry point ``finedefics`` in the group ``lmms_eval.models`` (``pyproject.toml``), whose payload is
:func:`model_manifest`. Importing this module also registers it (a source checkout without the installed entry
point). The tasks are YAML files in the folder ``python -m finedefics_eval.lmms_eval_plugin`` prints
(:data:`TASK_FOLDER`, shipped in the package), given to lmms-eval with ``--include_path``:

- ``finedefics_foci_<dataset>`` (``aircraft-102``, ``bird-200``, ``car-196``, ``dog-120``, ``flower-102``,
  ``pet-37``) and the group ``finedefics_foci`` (their unweighted mean, as FGVR papers average them): FOCI's
  4-way multiple choice, scored by generation and FOCI's answer rule, as ``finedefics eval --benchmark
  foci:<dataset>``; ``finedefics_foci_<dataset>_likelihood`` and ``finedefics_foci_likelihood``: by the
  options' letter likelihood, as ``--mode likelihood``. Images are read from ``FINEDEFICS_IMAGE_ROOT``
  (``$FINEDEFICS_IMAGE_ROOT/<dataset>`` where that folder exists, as ``finedefics eval --image-root`` takes it
  with several datasets); nothing is downloaded.
- ``finedefics_data`` and ``finedefics_data_likelihood``: any benchmark ``finedefics eval --benchmark`` reads,
  named by ``FINEDEFICS_BENCHMARK`` (a ``finedefics data`` folder, the synthetic benchmark, an imagefolder, a
  ``save_to_disk`` dataset or a FOCI option file).

lmms-eval passes tasks no arguments, so the settings ``finedefics eval`` takes as flags are environment variables
(:data:`SETTINGS`): ``FINEDEFICS_SEED`` (option order, default 0), ``FINEDEFICS_SPLIT`` (default ``test``),
``FINEDEFICS_PROMPT_TEMPLATE`` (default ``{}``), ``FINEDEFICS_MAX_PER_LABEL`` (FOCI datasets). Objects are named
in the questions as ``finedefics eval`` names them: by the evaluated checkpoint's ``config.object_noun`` (lmms-eval
builds the model before the tasks), else by the benchmark data's own noun; FOCI's datasets keep FOCI's question.

The examples, their seeded option order, the prompts (``finedefics_data.prompts``, through
``finedefics_eval.scoring.prepare_examples``), the image checks (``Benchmark.load_image``), greedy decoding
(``SharedBatch.greedy_answers``: FOCI's 10 new tokens) and the letter likelihood
(``LikelihoodScorer.continuation_scores``) are ``finedefics eval``'s own, called here, so lmms-eval's accuracy and
per-image predictions equal ``finedefics eval``'s for the same checkpoint, seed and batch size (``finedefics eval``
batches 8 images; pass ``--batch_size 8``). Missing images are counted, logged and skipped, as there; so are
unreadable ones (the metric ``skipped_images`` counts both). Each sample's ``accuracy`` value is its FOCI prediction
record (``--log_samples``).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # `python -m finedefics_eval.lmms_eval_plugin`: the task folder, before the heavy imports
    print(Path(__file__).resolve().with_name("lmms_tasks"))
    raise SystemExit(0)

from lmms_eval.api.model import lmms  # noqa: E402
from lmms_eval.api.task import ConfigurableTask  # noqa: E402

logger = logging.getLogger(__name__)

MODEL_NAME = "finedefics"
TASK_FOLDER = Path(__file__).resolve().with_name("lmms_tasks")
# The environment variables the tasks read, with their defaults (None: required where said).
SETTINGS = {
    "FINEDEFICS_BENCHMARK": None,  # finedefics_data*: what `finedefics eval --benchmark` takes
    "FINEDEFICS_IMAGE_ROOT": None,  # FOCI tasks (and option files): `finedefics eval --image-root`
    "FINEDEFICS_SEED": "0",
    "FINEDEFICS_SPLIT": "test",
    "FINEDEFICS_PROMPT_TEMPLATE": "{}",
    "FINEDEFICS_MAX_PER_LABEL": None,
}
SCORINGS = {"generate": "generate_until", "likelihood": "multiple_choice"}

# The Finedefics model this process evaluates (set when the plugin loads one): the tasks name the objects with its
# noun and mine missing options with its text embeddings, as `finedefics eval` does with the checkpoint it loads.
_ACTIVE: dict = {}


class CheckpointLoadError(ValueError):
    """A ``pretrained`` checkpoint the plugin cannot load (missing, broken, another architecture)."""


# ----------------------------------------------------------------------------- registration
def model_manifest():
    """lmms-eval's registration of the model ``finedefics`` (the payload of this package's entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.Finedefics")


def register() -> None:
    """Register ``finedefics`` in lmms-eval's model registry now (the entry point does it when installed)."""
    models = sys.modules.get("lmms_eval.models")
    if models is None:
        import lmms_eval.models as models  # its registry loads this package's entry point itself
    registry = getattr(models, "MODEL_REGISTRY_V2", None)
    if registry is None:  # lmms_eval.models is being imported and is loading this module as its entry point
        return
    registry.register_manifest(model_manifest(), overwrite=True)
    models.AVAILABLE_MODELS[MODEL_NAME] = "Finedefics"


def task_names() -> list[str]:
    """The tasks and groups in :data:`TASK_FOLDER`."""
    import yaml

    names = []
    for path in sorted(TASK_FOLDER.glob("*.yaml")):
        text = path.read_text(encoding="utf-8").replace("!function", "")
        config = yaml.safe_load(text)
        names.append(config.get("group") or config["task"])
    return sorted(names)


def check_task_names(names) -> list[str]:
    """``names`` (a list or a comma-separated string) if every ``finedefics_*`` one is a task of :data:`TASK_FOLDER`;
    an unknown one is a ValueError naming the closest task and every one there is."""
    names = names.split(",") if isinstance(names, str) else list(names)
    known = task_names()
    for name in names:
        if name.startswith(MODEL_NAME) and name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(f"unknown Finedefics task {name!r}: {hint}the tasks in {TASK_FOLDER} are "
                             f"{', '.join(known)} (give that folder to lmms-eval with --include_path)")
    return names


def task_manager(include_defaults: bool = False):
    """An lmms-eval ``TaskManager`` indexing :data:`TASK_FOLDER` (and lmms-eval's own tasks if asked)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=str(TASK_FOLDER), include_defaults=include_defaults,
                       model_name=MODEL_NAME)


def evaluate(pretrained: str, tasks, batch_size: int = 8, device: str = "auto", dtype: str = "auto",
             limit: int | None = None, log_samples: bool = True, **simple_evaluate_arguments) -> dict:
    """``lmms_eval.evaluator.simple_evaluate`` of the model ``finedefics`` on Finedefics tasks (names checked first).

    Returns lmms-eval's results dict (``results[task]["accuracy,none"]``; with ``log_samples``,
    ``samples[task]`` holds every document's prediction record under ``"accuracy"``).
    """
    from lmms_eval import evaluator

    register()
    tasks = check_task_names(tasks)
    model = Finedefics(pretrained=pretrained, batch_size=batch_size, device=device, dtype=dtype)
    return evaluator.simple_evaluate(model=model, tasks=tasks, task_manager=task_manager(), limit=limit,
                                     log_samples=log_samples, batch_size=batch_size, **simple_evaluate_arguments)


# ----------------------------------------------------------------------------- the model
def check_torchvision() -> None:
    """lmms-eval requires torchvision, and pip takes PyPI's build, which fails to import beside a torch built
    otherwise (a CPU wheel from a local file, say): transformers' processors then fail with an unrelated message.
    Said here, with the fix, instead."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # RuntimeError: operator torchvision::nms does not exist
        import torch

        raise RuntimeError(f"torchvision does not work beside torch {torch.__version__} ({error}): lmms-eval "
                           "requires torchvision and pip installed a build for another torch, which breaks "
                           "transformers' image processors. Install the torchvision built for this torch, or "
                           "`pip uninstall torchvision` (neither lmms-eval's evaluator nor the finedefics plugin "
                           "uses it).") from error


def load_checkpoint(pretrained: str, device: str = "auto", dtype: str = "auto"):
    """``(model, processor)`` as ``finedefics eval`` loads them (``finedefics_eval.loading.load_model``: every
    family's Finedefics or stock checkpoint, a LoRA adapter folder merged into its base); what cannot be loaded is a
    :class:`CheckpointLoadError` naming the checkpoint and the cause."""
    from .loading import load_model

    if not pretrained:
        raise CheckpointLoadError("finedefics: give the checkpoint as --model_args pretrained=PATH_OR_HUB_ID")
    try:
        return load_model(str(pretrained), device, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointLoadError(f"finedefics: cannot load the checkpoint {pretrained!r}: {error}") from error


class Finedefics(lmms):
    """A Finedefics checkpoint of any family as an lmms-eval model, scored as ``finedefics eval`` scores it.

    ``--model_args pretrained=PATH_OR_HUB_ID[,device=cpu|cuda|auto][,dtype=auto|float32|bfloat16|float16]
    [,max_new_tokens=N][,trust_remote_code=true]``; the batch size is lmms-eval's ``--batch_size``.

    - ``generate_until``: one user turn holding the image and the request's text in the checkpoint's chat template,
      greedy decoding (``SharedBatch.greedy_answers``); ``max_new_tokens`` from the task, else this model's, else
      FOCI's 10; an ``until`` string cuts the answer there; sampling settings are not used (greedy, as
      ``finedefics eval``).
    - ``loglikelihood``: the summed log-probability of the continuation (whitespace-stripped) as the assistant's
      answer after the same prompt (``LikelihoodScorer``). It returns ``(-log p, is_greedy)``: lmms-eval 0.7.3's
      ``multiple_choice`` picks the smallest value, as its own models return a loss. (lmms-eval 0.7.3 then stores
      the pair as its string, which its own ``multiple_choice`` scoring does not parse back; the Finedefics
      likelihood tasks do, see :func:`likelihood_value`.)

    Requests carry one image or none; a doc whose image cannot be read is logged and answered with ``""`` (the
    Finedefics tasks skip it). ``trust_remote_code`` is accepted for lmms-eval's sake: a Finedefics checkpoint,
    pushed with its code or not, loads with this package's installed classes, so no checkpoint code runs.
    """

    is_simple = True

    def __init__(self, pretrained: str = "", device: str | None = "auto", dtype: str = "auto",
                 batch_size: int | str = 8, max_batch_size: int | None = None, max_new_tokens: int | None = None,
                 trust_remote_code: bool | str = False, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"finedefics: unknown model_args {sorted(unknown)}; it takes pretrained, device, dtype, "
                             "max_new_tokens and trust_remote_code (the batch size is --batch_size)")
        try:
            self.batch_size_per_request = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"finedefics: --batch_size must be a whole number, got {batch_size!r}") from None
        if self.batch_size_per_request < 1:
            raise ValueError(f"finedefics: --batch_size must be at least 1, got {batch_size!r}")
        check_torchvision()
        self.pretrained = str(pretrained)
        self.model, self.processor = load_checkpoint(self.pretrained, device or "auto", dtype)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else None
        from finedefics_data.prompts import ObjectNoun

        _ACTIVE.clear()
        _ACTIVE.update(pretrained=self.pretrained, model=self.model, processor=self.processor,
                       noun=ObjectNoun.from_config(self.model.config.to_dict()))
        self._warned_sampling = False

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_request

    @property
    def device(self):
        return self.model.device

    # ------------------------------------------------------------------------- requests
    def _visuals(self, request) -> tuple[list | None, bool]:
        """``(images, readable)`` of a request: one PIL image or none (``None``); an image that cannot be read is
        logged and marks the request unreadable."""
        from PIL import Image

        if len(request.args) < 6:  # ("", continuation): lmms-eval's unconditional likelihood, no image
            return None, True
        doc_to_visual, doc_id, task, split = request.args[-4:]
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if callable(doc_to_visual) else None
        except (FileNotFoundError, ValueError) as error:
            logger.warning("%s: skipping document %s, its image cannot be read: %s", task, doc_id, error)
            return None, False
        visuals = [visual for visual in (visuals or []) if visual is not None]
        if len(visuals) > 1 or any(not isinstance(visual, Image.Image) for visual in visuals):
            raise ValueError(f"finedefics answers about one image per request; task {task!r} document {doc_id} "
                             f"gives {len(visuals)} visual(s) of types {sorted({type(v).__name__ for v in visuals})}")
        return (visuals or None), True

    def _chunks(self, requests, indices, key):
        """The requests at ``indices`` in (task, document) order, cut into consecutive runs of ``batch_size`` with
        the same ``key(index)``: as ``finedefics eval`` batches a benchmark's examples."""
        tasks = list(dict.fromkeys(request.task_name for request in requests))
        order = sorted(indices, key=lambda i: (tasks.index(requests[i].task_name), requests[i].doc_id,
                                               requests[i].idx))
        chunk, chunk_key = [], None
        for index in order:
            this_key = key(index)
            if chunk and (this_key != chunk_key or len(chunk) == self.batch_size):
                yield chunk
                chunk = []
            chunk, chunk_key = chunk + [index], this_key
        if chunk:
            yield chunk

    def _by_image(self, requests, chunk):
        """The chunk's readable requests as ``(images or None, indices)``: those with an image, then text-only ones."""
        with_image, images, text_only = [], [], []
        for index in chunk:
            visuals, readable = self._visuals(requests[index])
            if not readable:
                continue
            if visuals is None:
                text_only.append(index)
            else:
                with_image.append(index)
                images.append(visuals[0])
        if with_image:
            yield images, with_image
        if text_only:
            yield None, text_only

    def generate_until(self, requests) -> list[str]:
        from tqdm.auto import tqdm

        from .scoring import FOCI_MAX_NEW_TOKENS, SharedBatch

        answers = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="finedefics generate", disable=self.rank != 0)
        settings_key = {i: repr(sorted((request.args[1] or {}).items())) for i, request in enumerate(requests)}
        for chunk in self._chunks(requests, range(len(requests)),
                                  lambda i: (requests[i].task_name, settings_key[i])):
            settings = dict(requests[chunk[0]].args[1] or {})
            self._warn_sampling(settings)
            max_new_tokens = int(settings.get("max_new_tokens") or self.max_new_tokens or FOCI_MAX_NEW_TOKENS)
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            for images, indices in self._by_image(requests, chunk):
                texts = [requests[i].args[0] for i in indices]
                generated = SharedBatch(self.model, self.processor, images).greedy_answers(texts, max_new_tokens)
                for index, answer in zip(indices, generated):
                    answers[index] = _cut(answer, until)
            bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        from .scoring import LikelihoodScorer, SharedBatch

        scorer = LikelihoodScorer(self.model, self.processor, "letter")  # the continuation alone, no end of turn
        results: list[tuple[float, bool]] = [(float("inf"), False)] * len(requests)
        members = _likelihood_groups(requests)  # first request index -> the requests asking about its prompt
        bar = tqdm(total=len(requests), desc="finedefics loglikelihood", disable=self.rank != 0)
        for chunk in self._chunks(requests, list(members), lambda i: (requests[i].task_name, len(members[i]))):
            for images, indices in self._by_image(requests, chunk):
                texts = [requests[i].args[0] for i in indices]
                continuations = [[scorer.answer_ids(_continuation(self, requests[m])) for m in members[i]]
                                 for i in indices]
                shared = SharedBatch(self.model, self.processor, images)
                scores, greedy = scorer.continuation_scores(texts, continuations, shared)
                for row, index in enumerate(indices):
                    for column, member in enumerate(members[index]):
                        results[member] = (-float(scores[row, column]), bool(greedy[row, column]))
            bar.update(sum(len(members[i]) for i in chunk))
        bar.close()
        return results

    def _warn_sampling(self, settings: dict) -> None:
        sampling = settings.get("do_sample") or float(settings.get("temperature") or 0) > 0
        if sampling and not self._warned_sampling:
            logger.warning("finedefics decodes greedily, as finedefics eval does; the task's sampling settings "
                           "(do_sample, temperature) are not used")
            self._warned_sampling = True

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("finedefics answers single-turn requests (generate_until, loglikelihood); "
                                  "multi-round generation is not supported")


def _cut(answer: str, until: list[str]) -> str:
    """``answer`` up to the first of the ``until`` strings."""
    for stop in until:
        if stop and stop in answer:
            answer = answer[:answer.index(stop)]
    return answer


def _likelihood_groups(requests) -> dict[int, list[int]]:
    """Requests asking about the same prompt of the same document (lmms-eval's multiple choice asks once per
    option), grouped: ``{first request index: [their indices]}`` in order of first appearance."""
    groups: dict = {}
    for index, request in enumerate(requests):
        key = (request.task_name, request.doc_id, len(request.args), request.args[0])
        groups.setdefault(key, []).append(index)
    return {indices[0]: indices for indices in groups.values()}


def _continuation(model: Finedefics, request) -> str:
    """The continuation text of a loglikelihood request (a ``doc_to_target`` callable is applied to its doc)."""
    continuation = request.args[1]
    if callable(continuation):
        _, _, _, doc_id, task, split = request.args
        continuation = continuation(model.task_dict[task][split][doc_id])
    continuation = str(continuation).strip()
    if not continuation:
        raise ValueError(f"finedefics: an empty continuation to score (task {request.task_name!r}, "
                         f"document {request.doc_id})")
    return continuation


# ----------------------------------------------------------------------------- the tasks
def _setting(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else SETTINGS[name]


def _int_setting(name: str) -> int | None:
    value = _setting(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


class _ActiveModel:
    """``LazyModel``'s ``get`` for the model the plugin loaded (the option miner of ``--negatives auto``)."""

    def get(self):
        return _ACTIVE["model"], _ACTIVE["processor"]


def load_task_benchmark(benchmark: str | None):
    """The :class:`~finedefics_eval.benchmarks.Benchmark` of a Finedefics task, as ``finedefics eval`` loads it:
    ``foci:<dataset>`` from ``FINEDEFICS_IMAGE_ROOT``, ``None`` (``finedefics_data``) from ``FINEDEFICS_BENCHMARK``."""
    from .benchmarks import load_benchmark
    from .loading import negatives_option

    image_root = _setting("FINEDEFICS_IMAGE_ROOT")
    if benchmark is None:
        benchmark = _setting("FINEDEFICS_BENCHMARK")
        if benchmark is None:
            raise ValueError("the task finedefics_data evaluates the benchmark named by FINEDEFICS_BENCHMARK (a "
                             "`finedefics data` folder, the synthetic benchmark, an imagefolder, a save_to_disk "
                             "dataset or a FOCI option file); set it, e.g. FINEDEFICS_BENCHMARK=runs/synth")
    else:
        name = benchmark.removeprefix("foci:")
        if image_root is None:
            raise ValueError(f"the FOCI task for {name} reads its images from FINEDEFICS_IMAGE_ROOT (the folder its "
                             f"option file's image paths are relative to, or a folder holding {name}/); set it")
        if (Path(image_root) / name).is_dir():
            image_root = str(Path(image_root) / name)
    extra = {"max_per_label": _int_setting("FINEDEFICS_MAX_PER_LABEL")} if _setting("FINEDEFICS_MAX_PER_LABEL") \
        else {}
    negatives = negatives_option("auto", _ActiveModel()) if "model" in _ACTIVE else None
    return load_benchmark(benchmark, image_root=image_root, split=_setting("FINEDEFICS_SPLIT"), negatives=negatives,
                          noun=_ACTIVE.get("noun"), **extra)


class FinedeficsTask(ConfigurableTask):
    """A Finedefics benchmark as an lmms-eval task (the ``class`` of the YAML files in :data:`TASK_FOLDER`).

    The YAML's ``metadata`` says which benchmark (``benchmark: foci:bird-200``; none: ``FINEDEFICS_BENCHMARK``)
    and how it is scored (``scoring: generate`` or ``likelihood``). Its documents are the benchmark's examples
    whose image exists, each with its options in the seeded order shown to the model and its prompt.
    """

    def __init__(self, config: dict | None = None, **_) -> None:
        config = {key: value for key, value in dict(config or {}).items() if key != "class"}
        metadata = dict(config.get("metadata") or {})
        self.scoring = metadata.get("scoring", "generate")
        if self.scoring not in SCORINGS:
            raise ValueError(f"{config.get('task')}: scoring must be one of {sorted(SCORINGS)}, got {self.scoring!r}")
        self.benchmark_spec = metadata.get("benchmark")
        self.unreadable: set[str] = set()
        defaults = {"output_type": SCORINGS[self.scoring], "test_split": "test", "doc_to_text": "prompt",
                    "doc_to_target": "answer_letter", "metadata": metadata}
        if self.scoring == "generate":
            from .scoring import FOCI_MAX_NEW_TOKENS

            # No stop strings: the whole answer is kept, as finedefics eval keeps it (a failure's text is recorded).
            defaults["generation_kwargs"] = {"max_new_tokens": FOCI_MAX_NEW_TOKENS, "do_sample": False, "until": []}
        else:
            from .foci import CHOICE_LETTERS

            defaults["doc_to_choice"] = list(CHOICE_LETTERS)
        super().__init__(config={**defaults, **config})

    def download(self, dataset_kwargs=None) -> None:
        """Build the documents from the benchmark (nothing is downloaded)."""
        from datasets import Dataset, DatasetDict

        from .scoring import prepare_examples

        self.benchmark = load_task_benchmark(self.benchmark_spec)
        settings = {"seed": _int_setting("FINEDEFICS_SEED"), "prompt_template": _setting("FINEDEFICS_PROMPT_TEMPLATE")}
        prepared = prepare_examples(self.benchmark.examples, self.benchmark.query, **settings)
        missing = {example.example_id for example in self.benchmark.missing_images()}
        if missing:
            logger.warning("%s: %d of %d images are missing under %s; they are skipped", self.benchmark.name,
                           len(missing), len(prepared), self.benchmark.image_root)
            if len(missing) == len(prepared):
                raise ValueError(f"benchmark {self.benchmark.name!r}: none of its {len(prepared)} images exist under "
                                 f"{self.benchmark.image_root} (e.g. {prepared[0].example.image})")
        docs = [{"example_id": item.example.example_id, "image": item.example.image,
                 "groundtruth": item.example.groundtruth, "options": list(item.shown_options),
                 "answer_letter": item.answer_letter, "prompt": item.prompt}
                for item in prepared if item.example.example_id not in missing]
        self.examples = {item.example.example_id: item.example for item in prepared}
        self.config.metadata.update({"benchmark_name": self.benchmark.name, "num_examples": len(prepared),
                                     "missing_images": len(missing), **settings, "query": self.benchmark.query,
                                     "options_source": self.benchmark.options_source})
        self.dataset = DatasetDict({"test": Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset

    def doc_to_visual(self, doc: dict) -> list:
        """The document's image, read and checked as ``finedefics eval`` reads it; an unreadable one is recorded
        (and skipped in the scores) before the error goes to the model."""
        try:
            return [self.benchmark.load_image(self.examples[doc["example_id"]])]
        except (FileNotFoundError, ValueError):
            self.unreadable.add(doc["example_id"])
            raise

    def process_results(self, doc: dict, results: list, full_docs=None) -> dict:
        """The FOCI prediction record of the document, under ``accuracy`` (its ``score`` is 1 when right); a
        document whose image could not be read counts under ``skipped_images`` only."""
        import numpy as np

        from .foci import CHOICE_LETTERS, is_failure, parse_letter, prediction_record

        if doc["example_id"] in self.unreadable:
            return {"skipped_images": 1}
        if self.scoring == "generate":
            answer = results[0][0] if isinstance(results[0], list) else results[0]
            record = prediction_record(doc["image"], doc["options"], doc["groundtruth"], answer, parse_letter(answer))
        else:
            letter = CHOICE_LETTERS[int(np.argmin([likelihood_value(result) for result in results]))]
            record = prediction_record(doc["image"], doc["options"], doc["groundtruth"], letter, letter)
        record["score"] = float(record["predicted"] == record["correct"])
        return {"accuracy": record, "generation_failures": float(is_failure(record)), "skipped_images": 0}

    def aggregation(self) -> dict:
        from lmms_eval.api.metrics import mean

        return {"accuracy": foci_accuracy, "generation_failures": mean, "skipped_images": self.skipped_images}

    def higher_is_better(self) -> dict:
        return {"accuracy": True, "generation_failures": False, "skipped_images": False}

    def skipped_images(self, unreadable: list[int]) -> int:
        """The images left out of the scores: missing (no document) and unreadable, as ``finedefics eval`` counts
        them in its report's ``skipped``."""
        return self.config.metadata["missing_images"] + sum(unreadable)


def likelihood_value(result) -> float:
    """The value a loglikelihood answer carries, ``(-log p, is_greedy)`` or, as lmms-eval 0.7.3 stores it, that
    pair's string (its ``unwrap_generation_output`` turns every answer that is not text into ``str(answer)``)."""
    if isinstance(result, str):
        result = result.strip().strip("()").split(",")[0]
        return float(result)
    return float(result[0])


def foci_accuracy(records: list[dict]) -> float:
    """Accuracy over FOCI prediction records (``foci.foci_metrics``)."""
    from .foci import foci_metrics

    return foci_metrics(records)["accuracy"]


register()
