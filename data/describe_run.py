"""``finedefics data describe``: attribute descriptions for a labelled image folder, with no annotations.

The paper's pipeline (``describe.py``) over a whole dataset, batched and resumable:

1. the attribute list: given, or proposed by a text LLM (``attribute_list`` prompt);
2. every attribute asked of every image by an image-text-to-text model (``attribute_question`` prompt), a
   batch of (image, question) pairs per ``generate`` call, each answer cached on disk (``answer_cache.py``);
3. each image's visible values summarised into one sentence: by a text LLM (``summary`` prompt, cached too),
   or by the template sentence;
4. hard negatives mined: the categories whose images show the most similar attribute values (within the same
   group first, when a taxonomy is given);
5. the output folder: a ``save_to_disk`` dataset that ``train --dataset_dir``, ``two-stage`` and
   ``demo --data`` read, ``finedefics_data.json`` (the noun), ``describe_answers.jsonl`` (every image's
   answers) and ``describe_report.json``.

Under ``accelerate launch`` / ``torchrun`` the work is data-parallel (``sharding.DataParallel``, the mechanism
``finedefics eval`` uses): the images, in chunks of ``batch_size`` as one process takes them, are split over the
ranks in contiguous runs, and so are the summaries; each rank asks its own, the answers and sentences are merged
in the original order, and rank 0 alone writes the output folder, the same as one process writes (only the
report's timings and ``processes`` differ). The answer cache then has one writer per file (``answer_cache``):
every rank reads the shared cache and writes its own rank file, which rank 0 folds into the shared one at the end
(and at the start of the next run, after a killed launch).

    settings = DescribeSettings(vqa_model="training/demo_base", attributes=["body colour", "wheels"],
                                noun=ObjectNoun.of("vehicle"))
    report = describe_folder("my_images/", "described/", settings)
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .answer_cache import AnswerCache, RankAnswerCache, answer_key, content_hash, merge_rank_caches
from .describe import NOT_VISIBLE, clean_answer, load_prompt, one_sentence, parse_attribute_list, template_summary
from .describe_input import DescribeInput, ImageItem, read_input
from .negatives import negative_descriptions, top_k_from_similarity
from .schema import COLUMNS, RecordError, validate_record, write_data_info
from .sharding import DataParallel

logger = logging.getLogger(__name__)

RUN_FILE = "describe_run.json"  # marks a folder as a describe output; holds the settings of its run
REPORT_FILE = "describe_report.json"
ANSWERS_FILE = "describe_answers.jsonl"
CACHE_FILE = "describe_cache.sqlite"
TEMPLATE = "template"  # the summary "model" when no summary model is given
MAX_ATTRIBUTES = 12


@dataclass
class DescribeSettings:
    """Everything a describe run depends on besides its input (recorded in ``describe_run.json``)."""

    vqa_model: str
    attributes: list[str] | None = None  # or proposed by attribute_model
    attribute_model: str | None = None
    summary_model: str | None = None  # None: the template sentence
    noun: object = None  # an ObjectNoun; None: the data folder's, else "object"
    batch_size: int = 8
    max_images: int | None = None  # per split
    splits: list[str] | None = None  # None: every split of INPUT
    num_negatives: int = 3
    taxonomy: dict[str, str] | None = None  # {category: group}
    max_new_tokens: int = 16
    revision: str | None = None  # of the VQA model
    trust_remote_code: bool = False
    device: str = "auto"
    progress: bool = True


@dataclass
class Answers:
    """Bookkeeping of the answers a run used: how many came from the cache and how many were computed."""

    from_cache: int = 0
    computed: int = 0
    asking_seconds: float = 0.0  # spent asking the VQA model (and reading the cache), model loading included
    skipped_images: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- output folder
def check_output(output: Path, resume: bool) -> None:
    """Refuse an output folder holding anything but an earlier describe run, and that one unless ``resume``."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder")
    if not output.exists() or not any(output.iterdir()):
        return
    run_file = output / RUN_FILE
    if not run_file.is_file():
        raise ValueError(f"--output {output} is not empty and holds no describe run; choose a new folder (nothing "
                         "in it is overwritten)")
    if not resume:
        earlier = json.loads(run_file.read_text(encoding="utf-8")).get("input", "?")
        raise ValueError(f"--output {output} holds an earlier describe run (of {earlier}); pass --resume to continue "
                         "or redo it (answers already computed are reused), or choose a new folder")


def check_models(settings: DescribeSettings) -> None:
    """Every model the run will use, checked before anything is written (no weights are read)."""
    from .describe_models import check_text_model, check_vqa_model

    check_vqa_model(settings.vqa_model, settings.revision, settings.trust_remote_code)
    if settings.attribute_model and not settings.attributes:
        check_text_model(settings.attribute_model, "--attribute-model", trust_remote_code=settings.trust_remote_code)
    if settings.summary_model:
        check_text_model(settings.summary_model, "--summary-model", trust_remote_code=settings.trust_remote_code)


def _write_run_file(output: Path, source: Path, settings: DescribeSettings, noun) -> None:
    recorded = {key: value for key, value in asdict(settings).items() if key not in ("progress", "noun")}
    recorded["noun"] = noun.config_fields()
    (output / RUN_FILE).write_text(json.dumps({"input": str(source.resolve()), "settings": recorded}, indent=1)
                                   + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- models
class LazyModel:
    """A model's name and revision at once (they key the cache), its weights on first use: a rerun whose answers
    are all cached never loads it."""

    def __init__(self, name: str, revision: str, load):
        self.name, self.revision, self._load, self._model = name, revision, load, None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __getattr__(self, attribute):
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        if self._model is None:
            self._model = self._load()
        return getattr(self._model, attribute)


def lazy_text_model(name: str, option: str, settings: DescribeSettings) -> LazyModel:
    from .describe_models import load_text_model, model_revision

    return LazyModel(name, model_revision(name), lambda: load_text_model(
        name, option, trust_remote_code=settings.trust_remote_code, device=settings.device))


# ----------------------------------------------------------------------------- step 1: attributes
def attribute_list(settings: DescribeSettings, noun, cache: AnswerCache, models: dict,
                   counts: Answers | None = None) -> list[str]:
    """The attributes to ask: ``settings.attributes``, or those the attribute model proposes (cached)."""
    if settings.attributes:
        attributes = list(dict.fromkeys(a.strip() for a in settings.attributes if a.strip()))
        if attributes:
            return attributes
    if not settings.attribute_model:
        raise ValueError("give the attributes to ask (--attributes \"a,b,c\") or a model to propose them "
                         "(--attribute-model)")
    model = lazy_text_model(settings.attribute_model, "--attribute-model", settings)
    models["attribute"] = {"name": model.name, "revision": model.revision}
    prompt = load_prompt("attribute_list").format(super_category=noun.plural)
    answer = cached_completions(model, [prompt], cache, max_new_tokens=96, counts=counts)[0]
    attributes = parse_attribute_list(answer, MAX_ATTRIBUTES)
    if not attributes:
        raise ValueError(f"--attribute-model {settings.attribute_model} proposed no attributes for {noun.plural} (it "
                         f"answered {answer[:80]!r}); give them with --attributes")
    return attributes


def cached_completions(model, prompts: list[str], cache: AnswerCache, max_new_tokens: int, batch_size: int = 8,
                       counts: Answers | None = None) -> list[str]:
    """The text model's completion of each prompt, from the cache where it has it, computed in batches otherwise."""
    keys = [answer_key("", prompt, model.name, model.revision) for prompt in prompts]
    found = cache.get_many(keys)
    missing = [i for i, key in enumerate(keys) if key not in found]
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        texts = model.complete([prompts[i] for i in batch], max_new_tokens)
        cache.put_many((keys[i], "", prompts[i], model.name, model.revision, text) for i, text in zip(batch, texts))
        found.update((keys[i], text) for i, text in zip(batch, texts))
    if counts is not None:
        counts.from_cache += len(prompts) - len(missing)
        counts.computed += len(missing)
    return [found[key] for key in keys]


# ----------------------------------------------------------------------------- step 2: questions
def questions_for(attributes: list[str], noun) -> dict[str, str]:
    template = load_prompt("attribute_question")
    return {attribute: template.format(attribute=attribute, noun=noun.singular) for attribute in attributes}


def ask_images(items: list[ImageItem], questions: dict[str, str], vqa, cache: AnswerCache, batch_size: int,
               max_new_tokens: int, counts: Answers, progress: bool = True,
               processes: DataParallel | None = None) -> dict[int, dict[str, str]]:
    """``{item index: {attribute: raw answer}}`` for every readable image; unreadable ones are named in
    ``counts.skipped_images`` and left out.

    Images are taken ``batch_size`` at a time; their uncached questions are asked ``batch_size`` pairs per
    ``generate`` call and each batch's answers are committed to the cache before the next one is asked. With
    ``processes``, each rank takes its share of those chunks and gets this rank's answers only (and counts);
    ``merge_answers`` joins them.
    """
    from tqdm.auto import tqdm

    chunks = [range(start, min(start + batch_size, len(items))) for start in range(0, len(items), batch_size)]
    if processes is not None:
        chunks = processes.shard(chunks)
    answers: dict[int, dict[str, str]] = {}
    with tqdm(total=sum(map(len, chunks)), desc="describing", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for chunk in chunks:
            pending = _cached_answers(items, chunk, questions, vqa, cache, answers, counts)
            for first in range(0, len(pending), batch_size):
                _ask_batch(pending[first:first + batch_size], vqa, cache, answers, max_new_tokens)
            counts.computed += len(pending)
            bar.update(len(chunk))
    return answers


def merge_answers(processes: DataParallel, answers: dict[int, dict[str, str]], counts: Answers) -> tuple:
    """Every rank's answers (``ask_images``) and bookkeeping as one process's, in the original order, on every
    rank: answers and skipped images concatenated by rank, counts added up, the slowest rank's asking time."""
    if processes.world_size == 1:
        return answers, counts
    merged, total = {}, Answers()
    for rank_answers, rank_counts in processes.gather((answers, counts)):
        merged.update(rank_answers)
        total.from_cache += rank_counts.from_cache
        total.computed += rank_counts.computed
        total.asking_seconds = max(total.asking_seconds, rank_counts.asking_seconds)
        total.skipped_images += rank_counts.skipped_images
    return merged, total


def _cached_answers(items, chunk, questions, vqa, cache, answers, counts) -> list[tuple]:
    """Fill ``answers`` from the cache for the images of ``chunk``; return the questions still to ask, as
    ``(item index, attribute, question, key, image hash, image)`` with the image decoded."""
    from modeling_finedefics.processing_finedefics import read_image

    pending = []
    for index in chunk:
        item = items[index]
        try:
            data = item.read()
        except ValueError as error:
            counts.skipped_images.append({"image": item.name, "problem": str(error)})
            continue
        image_hash = content_hash(data)
        keys = {a: answer_key(image_hash, q, vqa.name, vqa.revision) for a, q in questions.items()}
        found = cache.get_many(keys.values())
        answers[index] = {a: found[key] for a, key in keys.items() if key in found}
        counts.from_cache += len(answers[index])
        missing = [a for a in questions if a not in answers[index]]
        if not missing:
            continue  # every answer is cached: the image need not even be decoded
        try:
            image = read_image(io.BytesIO(data), item.name)
        except ValueError as error:
            counts.skipped_images.append({"image": item.name, "problem": str(error)})
            del answers[index]
            continue
        pending += [(index, a, questions[a], keys[a], image_hash, image) for a in missing]
    return pending


def _ask_batch(batch: list[tuple], vqa, cache: AnswerCache, answers: dict, max_new_tokens: int) -> None:
    texts = vqa.answer([entry[5] for entry in batch], [entry[2] for entry in batch], max_new_tokens)
    cache.put_many((key, image_hash, question, vqa.name, vqa.revision, text)
                   for (_, _, question, key, image_hash, _), text in zip(batch, texts))
    for (index, attribute, *_), text in zip(batch, texts):
        answers[index][attribute] = text


# ----------------------------------------------------------------------------- step 3: descriptions
def read_answer(attribute: str, answer: str) -> str:
    """An answer as the attribute's value (the default reader): its first line, cleaned (``clean_answer``)."""
    return clean_answer(answer)


def visible_values(raw: dict[str, str], attributes: list[str], read_value=read_answer) -> dict[str, str]:
    """The answers that name a value, read by ``read_value(attribute, answer)``; empty and "not visible" answers
    are left out."""
    values = {}
    for attribute in attributes:
        value = read_value(attribute, raw.get(attribute, ""))
        if value not in NOT_VISIBLE:
            values[attribute] = value
    return values


def summarise_all(values: dict[int, dict[str, str]], settings: DescribeSettings, noun, cache: AnswerCache,
                  models: dict, counts: Answers, processes: DataParallel | None = None,
                  sentence_for=None) -> tuple[dict[int, str], Counter]:
    """One sentence per image: the summary model's first sentence, else ``sentence_for(values)`` or the template
    sentence; an image with no visible attribute gets ``""``. Returns the sentences and the counts of fallbacks
    used.

    The summary model's prompts are taken ``batch_size`` at a time (the cached ones left out of each chunk); with
    ``processes`` the chunks are shared out like the images, and the sentences merged in order on every rank.
    """
    notes: Counter = Counter()
    sentences = {index: "" for index, found in values.items() if not found}
    notes["images with no visible attribute (no description)"] = len(sentences)
    described = [index for index, found in values.items() if found]
    if settings.summary_model is None:
        write = sentence_for or (lambda found: template_summary(found, noun.singular))
        sentences.update((index, write(values[index])) for index in described)
        return sentences, notes
    model = lazy_text_model(settings.summary_model, "--summary-model", settings)
    models["summary"] = {"name": model.name, "revision": model.revision}
    template = load_prompt("summary")
    prompts = [template.format(noun=noun.singular, pairs="\n".join(f"{a}: {v}" for a, v in values[i].items()))
               for i in described]
    chunks = [prompts[start:start + settings.batch_size] for start in range(0, len(prompts), settings.batch_size)]
    processes = processes or DataParallel()
    texts = processes.merge([text for chunk in processes.shard(chunks) for text in cached_completions(
        model, chunk, cache, max_new_tokens=48, batch_size=settings.batch_size, counts=counts)])
    for index, text in zip(described, texts):
        sentence = one_sentence(text)
        if not sentence.strip(" .!?"):
            notes["empty summaries (template sentence used)"] += 1
            sentence = template_summary(values[index], noun.singular)
        sentences[index] = sentence
    return sentences, notes


# ----------------------------------------------------------------------------- step 4: negatives
def category_profiles(items: list[ImageItem], values: dict[int, dict[str, str]]) -> tuple[list[str], np.ndarray]:
    """Per category, how often each ``(attribute, value)`` was seen among its images, L2-normalised (a category
    whose images show no value gets a zero row)."""
    names = sorted({items[index].category for index in values})
    pairs = sorted({(a, v) for found in values.values() for a, v in found.items()})
    column, row = {pair: i for i, pair in enumerate(pairs)}, {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), len(pairs)))
    for index, found in values.items():
        for pair in found.items():
            counts[row[items[index].category], column[pair]] += 1
    norms = np.linalg.norm(counts, axis=1, keepdims=True)
    return names, np.divide(counts, norms, out=np.zeros_like(counts), where=norms > 0)


def mine_siblings(names: list[str], profiles: np.ndarray, k: int, taxonomy: dict[str, str] | None = None):
    """``{category: negatives}``: the categories whose images show the most similar attribute values (cosine of
    the profiles); with a taxonomy, the categories of the same group come first."""
    similarity = profiles @ profiles.T
    how = "similarity of the described attribute values"
    if taxonomy:
        groups = np.array([taxonomy.get(name, f"\0{name}") for name in names])  # ungrouped: a group of its own
        similarity = similarity + 2.0 * (groups[:, None] == groups[None, :])  # cosines lie in [0, 1]
        how = "taxonomy group, then " + how
    return top_k_from_similarity(similarity, names, min(k, len(names) - 1), how=how)


def category_descriptions(items: list[ImageItem], sentences: dict[int, str]) -> dict[str, str]:
    """Each category's description for the negatives: its first image's non-empty description."""
    found: dict[str, str] = {}
    for index in sorted(sentences):
        if sentences[index] and items[index].category not in found:
            found[items[index].category] = sentences[index]
    return found


def negatives_with_descriptions(negatives: dict, descriptions: dict[str, str], notes: Counter) -> dict:
    """``neg_attributes`` per category; a category one of whose negatives has no description gets none."""
    texts = {}
    for category, found in negatives.items():
        try:
            texts[category] = negative_descriptions({category: found}, descriptions)[category]
        except ValueError:
            notes["categories whose negatives lack a description (neg_attributes = [])"] += 1
            texts[category] = []
    return texts


# ----------------------------------------------------------------------------- step 5: output
def _split_columns(described: DescribeInput, split: str, fields: dict[int, dict]):
    """The split with the description columns: described rows get their fields, other rows keep theirs."""
    table = described.splits[split]
    defaults = {"attribute": "", "attributes": "{}", "neg_categories": [], "neg_attributes": [], "genus": "",
                "is_rare": False}
    columns = {name: list(table[name]) if name in table.column_names else [default] * len(table)
               for name, default in defaults.items()}
    for row, values in fields.items():
        for name, value in values.items():
            columns[name][row] = value
    table = table.remove_columns([name for name in columns if name in table.column_names])
    for name, values in columns.items():
        table = table.add_column(name, values)
    return table


def build_splits(described: DescribeInput, fields: dict[tuple[str, int], dict], dropped: set[tuple[str, int]]):
    """``DatasetDict`` of the output: the schema's columns first, labels over every split's categories."""
    import datasets

    categories = sorted({c for table in described.splits.values() for c in table["category"] if c})
    label_of = {name: i for i, name in enumerate(categories)}
    output = {}
    for split in described.splits:
        table = _split_columns(described, split, {row: f for (s, row), f in fields.items() if s == split})
        keep = [row for row in range(len(table)) if (split, row) not in dropped]
        table = table.select(keep)
        labels = [label_of.get(c) for c in table["category"]]
        table = table.remove_columns(["label"]) if "label" in table.column_names else table
        table = table.add_column("label", labels)
        ordered = [c for c in COLUMNS if c in table.column_names]
        table = table.select_columns(ordered + [c for c in table.column_names if c not in ordered])
        output[split] = table.cast_column("image", datasets.Image(decode=True))
    return datasets.DatasetDict(output)


def save_dataset(splits, output: Path, progress: bool = True) -> None:
    """Replace the folder's dataset (an earlier run's splits go first, so no stale split survives)."""
    import datasets

    index = output / "dataset_dict.json"
    if index.is_file():
        for split in json.loads(index.read_text(encoding="utf-8")).get("splits", []):
            shutil.rmtree(output / split, ignore_errors=True)
        index.unlink()
    silence = not progress and datasets.is_progress_bar_enabled()
    if silence:
        datasets.disable_progress_bars()
    try:
        splits.save_to_disk(str(output))
    finally:
        if silence:
            datasets.enable_progress_bars()


def write_answers(path: Path, items: list[ImageItem], answers: dict[int, dict[str, str]], attributes) -> None:
    """Every described image's raw answers, one JSON line each, for a look at what the model said."""
    with open(path, "w", encoding="utf-8") as handle:
        for index in sorted(answers):
            item = items[index]
            handle.write(json.dumps({"split": item.split, "row": item.row, "image": item.name,
                                     "category": item.category,
                                     "answers": {a: answers[index].get(a, "") for a in attributes}},
                                    ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- report
def attribute_rates(answers: dict[int, dict[str, str]], attributes: list[str],
                    read_value=read_answer) -> dict[str, dict]:
    """Per attribute: how many answers were empty, and how many said the attribute is not visible."""
    rates = {}
    for attribute in attributes:
        cleaned = [read_value(attribute, found.get(attribute, "")) for found in answers.values()]
        empty = sum(1 for value in cleaned if value == "")
        hidden = sum(1 for value in cleaned if value and value in NOT_VISIBLE)
        asked = len(cleaned)
        rates[attribute] = {"asked": asked, "empty": empty, "empty_rate": round(empty / asked, 4) if asked else 0.0,
                            "not_visible": hidden,
                            "not_visible_rate": round(hidden / asked, 4) if asked else 0.0}
    return rates


def build_report(described: DescribeInput, output: Path, attributes, answers, sentences, counts: Answers,
                 notes: Counter, models: dict, negatives_how: str, seconds: float,
                 read_value=read_answer) -> dict:
    images = len(described.items)
    described_count = sum(1 for text in sentences.values() if text)
    return {
        "input": str(described.source), "output": str(output), "images": images, "described": described_count,
        "without_description": len(sentences) - described_count,
        "skipped_images": {"count": len(counts.skipped_images), "images": counts.skipped_images},
        "ignored_files": described.ignored_files,
        "splits": {split: sum(1 for i in answers if described.items[i].split == split) for split in described.splits},
        "categories": len(described.categories), "attributes": attributes,
        "attribute_answers": attribute_rates(answers, attributes, read_value),
        "answer_reader": _name_of(read_value),
        "answers": {"total": counts.from_cache + counts.computed, "from_cache": counts.from_cache,
                    "computed": counts.computed},
        "notes": dict(notes), "models": models, "negatives": negatives_how,
        "seconds": round(seconds, 3), "images_per_second": round(images / seconds, 3) if seconds > 0 else None,
        "asking_seconds": round(counts.asking_seconds, 3),
    }


def summary_lines(report: dict) -> list[str]:
    """What the command prints: the counts a user checks first."""
    lines = [f"described {report['described']} of {report['images']} images ({report['categories']} categories) in "
             f"{report['seconds']:.1f} s ({report['images_per_second']} images/s)",
             f"answers: {report['answers']['computed']} computed, {report['answers']['from_cache']} from the cache"]
    skipped = report["skipped_images"]
    if skipped["count"]:
        shown = "; ".join(f"{s['image']}: {s['problem']}" for s in skipped["images"][:5])
        more = " ..." if skipped["count"] > 5 else ""
        lines.append(f"skipped {skipped['count']} unreadable images: {shown}{more}")
    if report["without_description"]:
        lines.append(f"{report['without_description']} images with no visible attribute have no description")
    for attribute, rate in report["attribute_answers"].items():
        if rate["empty"]:
            lines.append(f"attribute {attribute!r}: {rate['empty']} of {rate['asked']} answers empty")
    return lines


# ----------------------------------------------------------------------------- the run
def describe_folder(source: str | Path, output: str | Path, settings: DescribeSettings,
                    resume: bool = False, processes: DataParallel | None = None, read_value=read_answer,
                    sentence_for=None) -> dict | None:
    """Describe every image of ``source`` and write the dataset folder ``output``; returns the report.

    ``processes``: the launch to share the work with (default: every process of the launch this one belongs to,
    or this one alone). Rank 0 writes the folder and returns the report; the other ranks return None.

    For a VQA model with an answer format of its own (Python callers only; both are named in the report):
    ``read_value(attribute, answer) -> value`` reads the value out of an answer ("" or "not visible": none), and
    ``sentence_for({attribute: value}) -> str`` writes the description when no summary model is given (instead
    of the template sentence). The demo's base answers every question with a whole description, from which
    ``finedefics demo --descriptions generated`` reads the asked attribute (``training/demo/descriptions.py``).
    """
    from .describe_models import load_vqa_model, model_revision
    from .prompts import DEFAULT_NOUN

    started = time.perf_counter()
    if processes is None:
        processes = DataParallel(cpu=settings.device == "cpu" or None)
    source, output = Path(source), Path(output)
    if settings.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if output.resolve() == source.resolve():
        raise ValueError("--output must be another folder than INPUT")
    described = read_input(source, settings.max_images, settings.splits)
    noun = settings.noun or described.noun or DEFAULT_NOUN
    check_output(output, resume)
    if not (settings.attributes or settings.attribute_model):
        raise ValueError("give the attributes to ask (--attributes \"a,b,c\") or a model to propose them "
                         "(--attribute-model)")
    check_models(settings)
    processes.wait()  # every rank has checked the folder before rank 0 writes into it
    if processes.is_main:
        output.mkdir(parents=True, exist_ok=True)
        _write_run_file(output, source, settings, noun)
        merge_rank_caches(output / CACHE_FILE)  # the answers of a killed launch (and the shared file, created)
    processes.wait()
    run_settings = settings  # under a launch, --device auto or cuda puts each rank on its own device
    if processes.world_size > 1 and settings.device in ("auto", "cuda"):
        run_settings = replace(settings, device=str(processes.device))
    cache = AnswerCache(output / CACHE_FILE) if processes.world_size == 1 else RankAnswerCache(output / CACHE_FILE,
                                                                                               processes.rank)
    counts, models = Answers(), {}
    try:
        if processes.world_size == 1:
            attributes = attribute_list(run_settings, noun, cache, models, counts)
        else:  # asked once, by rank 0, and shared
            attributes, models = processes.gather(
                (attribute_list(run_settings, noun, cache, models, counts), models) if processes.is_main else None)[0]
        vqa = LazyModel(settings.vqa_model, model_revision(settings.vqa_model, settings.revision),
                        lambda: load_vqa_model(settings.vqa_model, settings.revision, settings.trust_remote_code,
                                               run_settings.device))
        models["vqa"] = {"name": vqa.name, "revision": vqa.revision}
        asking = time.perf_counter()
        answers = ask_images(described.items, questions_for(attributes, noun), vqa, cache, settings.batch_size,
                             settings.max_new_tokens, counts, settings.progress and processes.is_main, processes)
        counts.asking_seconds = time.perf_counter() - asking
        answers, counts = merge_answers(processes, answers, counts)
        # False: every answer came from the cache (on every rank)
        models["vqa"]["loaded"] = any(processes.gather(vqa.loaded))
        values = {index: visible_values(found, attributes, read_value) for index, found in answers.items()}
        summaries = Answers()  # this rank's share, added up over the ranks
        sentences, notes = summarise_all(values, run_settings, noun, cache, models, summaries, processes,
                                         sentence_for)
        for from_cache, computed in processes.gather((summaries.from_cache, summaries.computed)):
            counts.from_cache, counts.computed = counts.from_cache + from_cache, counts.computed + computed
    finally:
        cache.close()
    if processes.world_size > 1:
        processes.wait()  # every rank's answers are committed to its file
        if not processes.is_main:
            return None
        merge_rank_caches(output / CACHE_FILE)
    models.setdefault("summary", {"name": _name_of(sentence_for) if sentence_for else TEMPLATE, "revision": None})
    negatives_how = _write_output(described, output, noun, settings, attributes, answers, values, sentences, notes,
                                  counts)
    report = build_report(described, output, attributes, answers, sentences, counts, notes, models, negatives_how,
                          time.perf_counter() - started, read_value)
    report["processes"] = processes.world_size
    (output / REPORT_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _write_output(described, output, noun, settings, attributes, answers, values, sentences, notes, counts) -> str:
    items = described.items
    if len({items[i].category for i in answers}) < 2:
        raise ValueError(f"fewer than two categories have a readable image ({len(counts.skipped_images)} images "
                         "could not be read); nothing to write")
    names, profiles = category_profiles(items, values)
    negatives = mine_siblings(names, profiles, settings.num_negatives, settings.taxonomy)
    negative_texts = negatives_with_descriptions(negatives, category_descriptions(items, sentences), notes)
    fields = {}
    for index in sorted(answers):
        item = items[index]
        fields[(item.split, item.row)] = {
            "attribute": sentences[index], "attributes": json.dumps(values[index], ensure_ascii=False),
            "neg_categories": negatives[item.category], "neg_attributes": negative_texts[item.category],
            "genus": (settings.taxonomy or {}).get(item.category, "")}
        try:  # the same check every reader makes: a bad record is caught here, not mid-training
            validate_record({"image": item.name, "category": item.category, **fields[(item.split, item.row)]},
                            "describe", f"{item.split} row {item.row}")
        except RecordError as error:
            raise ValueError(f"a generated record is invalid: {error}") from None
    dropped = {(items[i].split, items[i].row) for i in range(len(items)) if i not in answers}
    save_dataset(build_splits(described, fields, dropped), output, settings.progress)
    write_data_info(output, noun)
    write_answers(output / ANSWERS_FILE, items, answers, attributes)
    return ("taxonomy group, then " if settings.taxonomy else "") + "similarity of the described attribute values"


def _name_of(function) -> str:
    """How the report names a reader or sentence writer: its module and name (its docstring's first line is the
    user's to read in the code)."""
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def read_taxonomy(path: str | Path) -> dict[str, str]:
    """``{category: group}`` from a JSON file: that mapping, or ``{group: [categories]}``."""
    from .schema import read_json_file

    path = Path(path)
    data = read_json_file(path, "--taxonomy file")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--taxonomy {path} must hold a JSON object: {{category: group}} or {{group: [categories]}}")
    if all(isinstance(v, list) for v in data.values()):
        return {category: group for group, members in data.items() for category in members}
    if all(isinstance(v, str) for v in data.values()):
        return dict(data)
    raise ValueError(f"--taxonomy {path} must map each category to a group name, or each group to a list of "
                     "categories")


__all__ = ["DescribeSettings", "describe_folder", "read_taxonomy", "check_output", "mine_siblings",
           "category_profiles"]
