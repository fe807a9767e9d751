"""An embedded synthetic fine-grained benchmark: stylised birds drawn procedurally, CUB-200 in miniature.

Why it exists: nothing can be downloaded in an offline or CI setting, yet the Finedefics recipe needs
images with attribute descriptions, category names and hard negatives. This generator builds a
task with the structure that makes fine-grained recognition hard:

- A category (species) is a fixed combination of nine visible attributes (build, plumage colour,
  wing colour and pattern, breast colour, beak, tail, crest, eye ring). Categories come in groups
  (genera) whose members share all but one attribute with the genus's type species, so two siblings
  differ in exactly one or two attributes (e.g. the tail shape, or the eye ring).
- Names are invented ("Velmoran Reedhopper"): they do not spell out the attributes, so the
  name <-> appearance link has to be learned, which is the misalignment Finedefics addresses.
- Images vary within a category: pose (facing side, rotation), scale, position, background colour
  and clutter, colour jitter, noise, and occasional occlusion of one part; the image's description
  then omits the hidden attribute.
- Each image has a one-sentence attribute description (several templates), its structured
  attribute values, and hard negatives (siblings first) with their descriptions.
- A long tail: ``rare_fraction`` of the categories get only ``rare_train_per_category`` training
  images, so accuracy on rare categories can be measured.

Everything is deterministic for a seed: each image is drawn from its own random stream keyed by
``(seed, split, label, index)``. Images are drawn with PIL at the final size (polygons only) and
noised with numpy, so generation runs at hundreds of images per second on one core.

Folder layout written by :func:`generate_benchmark`::

    DIR/train/*.png + metadata.jsonl     datasets.load_dataset("imagefolder", data_dir=DIR)
    DIR/test/*.png  + metadata.jsonl
    DIR/categories.json                  one entry per category (attributes, description, siblings, ...)
    DIR/foci_test.json                   the test split as FOCI 4-way options
    DIR/train_reference.csv              the train split in the reference implementation's CSV format
    DIR/README.md                        what the benchmark is, with its numbers

Modules (everything below is re-exported here, so ``finedefics_data.synth.X`` keeps working):

- :mod:`.vocabulary`: attributes, invented names, categories, descriptions and their parser.
- :mod:`.config`: :class:`SynthConfig`, the generator's settings.
- :mod:`.drawing`: shapes, poses and part maps (:func:`draw_bird`); benchmark and attribute-pool images.
- :mod:`.writing`: :func:`generate_benchmark` (staging folder and lock, splits, extras) and the reference CSV.
- :mod:`.readme`: the README written into a benchmark folder.
- :mod:`.loading`: reading a benchmark folder back (categories, split metadata, ``DatasetDict``).
- :mod:`.corpus`: the texts a tiny tokenizer is trained on.

Patch a name in the module that uses it (e.g. ``finedefics_data.synth.drawing.draw_bird``): patching the
re-export here does not reach the code in the submodules.
"""

from .config import SynthConfig
from .corpus import text_corpus
from .drawing import (
    ATTRIBUTE_PARTS,
    COLOURS,
    PARTS,
    POOL_STREAM,
    SPLITS,
    draw_bird,
    pool_sample,
    sample_image,
)
from .loading import benchmark_splits, load_benchmark, load_categories, load_metadata, load_synthetic_dataset
from .readme import benchmark_readme
from .vocabulary import (
    ATTRIBUTE_QUESTION_NAMES,
    ATTRIBUTES,
    MIN_GENUS_DISTANCE,
    NOUN,
    OCCLUDABLE,
    SPECIES_ATTRIBUTES,
    TEMPLATES,
    attribute_phrase,
    build_categories,
    describe,
    distinguishing_attributes,
    lookalikes,
    parse_description,
    random_attributes,
)
from .writing import (
    BENCHMARK_VERSION,
    REFERENCE_COLUMNS,
    _split_counts,
    _StagingLock,
    generate_benchmark,
    write_reference_csv,
    written_splits,
)

__all__ = [
    # vocabulary
    "ATTRIBUTE_QUESTION_NAMES", "ATTRIBUTES", "MIN_GENUS_DISTANCE", "NOUN", "OCCLUDABLE", "SPECIES_ATTRIBUTES",
    "TEMPLATES", "attribute_phrase", "build_categories", "describe", "distinguishing_attributes", "lookalikes",
    "parse_description", "random_attributes",
    # config
    "SynthConfig",
    # drawing
    "ATTRIBUTE_PARTS", "COLOURS", "PARTS", "POOL_STREAM", "SPLITS", "draw_bird", "pool_sample", "sample_image",
    # writing and its README
    "BENCHMARK_VERSION", "REFERENCE_COLUMNS", "benchmark_readme", "generate_benchmark", "write_reference_csv",
    "written_splits",
    # loading
    "benchmark_splits", "load_benchmark", "load_categories", "load_metadata", "load_synthetic_dataset",
    # tokenizer corpus
    "text_corpus",
    # private, but imported by benchmarks/bench_synth.py and tests/test_bad_inputs_data.py
    "_StagingLock", "_split_counts",
]
