"""``finedefics app MODEL``: look at what a Finedefics model does with one image, in a Gradio app.

A person uploads an image and sees, for the object in it:

- the model's **answer to the open-set question**: the very question ``finedefics eval --mode open_set`` asks
  (``prompts.open_set_question`` with the checkpoint's noun), greedy, with the open-set mode's token budget;
- the **top-5 categories by embedding similarity**, as a bar plot of their probabilities: ``model.classify``
  (the label embeddings of the embedding mode, softmax at the learned attribute-category temperature) over the
  candidate names;
- the model's **attribute description** of the object (stage I's instruction, ``prompts.describe_instruction``).

The candidate names are the checkpoint's own (``config.object_categories``, recorded by training), shown in a
text box the person may edit: names separated by commas or line breaks.

Bad input (a file that is no image, an image too large to decode, an empty or one-name candidate list) gets a
message in the page, never a traceback, and the server keeps serving. The app reads uploads where Gradio put
them (its upload folder, ``GRADIO_TEMP_DIR``: ``finedefics app`` points it at a fresh temporary folder) and
writes nothing of its own.

    viewer = ModelViewer.from_pretrained("finedefics-demo/model")   # or ModelViewer(model, processor)
    look = viewer.look("bird.png", "Velmoran Thistlewing, Corvel Tit")  # the same, without Gradio
    build_app(viewer).launch()                                          # 127.0.0.1 unless told otherwise

Gradio is the ``app`` extra (``pip install -e ".[app]"``); nothing here imports it before ``build_app``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from finedefics_data.names import names_match
from finedefics_data.prompts import DEFAULT_NOUN, ObjectNoun, describe_instruction, open_set_question

from .scoring import OPEN_SET_MAX_NEW_TOKENS, SharedBatch

logger = logging.getLogger(__name__)

TOP_K = 5
# Stage I's descriptions of the demo's birds fit in 48 tokens (the demo's premise check reads them with this budget).
DESCRIPTION_MAX_NEW_TOKENS = 48
# Refused before decoding: a 50-megapixel photo decodes to 150 MB of RGB, and PIL's own guard against
# decompression bombs only starts at 89 megapixels (with a warning).
MAX_PIXELS = 50_000_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
NO_IMAGE = "Upload an image of one object."


class BadInput(ValueError):
    """Input the app answers with a message in the page."""


# ----------------------------------------------------------------------------- inputs
def parse_candidates(text: str | None) -> list[str]:
    """Names separated by commas or line breaks, stripped, each kept once (first occurrence's order)."""
    names = (name.strip() for name in re.split(r"[,\n]", text or ""))
    return list(dict.fromkeys(name for name in names if name))


def check_candidates(names: list[str]) -> None:
    """Top-5 by similarity needs a choice: at least two names."""
    if not names:
        raise BadInput("The candidate list is empty: type category names, separated by commas or line breaks.")
    if len(names) == 1:
        raise BadInput(f"The candidate list has one name ({names[0]!r}): give at least two, a ranking of one "
                       "name says nothing.")


def open_upload(path: str | Path | None):
    """The uploaded file as an RGB PIL image; a file that is none, or one too large, is a :class:`BadInput`."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise BadInput(NO_IMAGE)
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise BadInput(f"The upload {name} is gone; upload it again.")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise BadInput(f"{name} is {size / 2**20:.0f} MB; this app takes images up to "
                       f"{MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        with Image.open(path) as image:  # reads the header only: the size is known before any decoding
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadInput(f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); this "
                               f"app takes images up to {MAX_PIXELS / 1e6:.0f} megapixels: make it smaller.")
            return image.convert("RGB")
    except BadInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise BadInput(f"{name} is not an image this app can read ({type(error).__name__}): upload a PNG, JPEG "
                       "or WebP picture.") from None
    except (OSError, ValueError, SyntaxError) as error:  # a truncated or corrupt image file
        raise BadInput(f"{name} could not be read as an image ({error}).") from None


# ----------------------------------------------------------------------------- the model's view
@dataclass
class Look:
    """What the model makes of one image: its open-set answer (and the candidate it names, if any), the top
    candidates by embedding similarity with their probabilities, its description, and a message for the page."""

    answer: str = ""
    named: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    description: str = ""
    message: str = ""


class ModelViewer:
    """A loaded model and processor with the questions of its checkpoint (its noun) and candidate names."""

    def __init__(self, model, processor, noun: ObjectNoun | None = None, categories: list[str] | None = None,
                 name: str = "model"):
        self.model, self.processor, self.name = model, processor, name
        self.noun = noun or ObjectNoun.from_config(model.config) or DEFAULT_NOUN
        stored = categories if categories is not None else getattr(model.config, "object_categories", None)
        self.categories = list(stored or [])

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", dtype: str = "auto",
                        noun: ObjectNoun | None = None, categories: list[str] | None = None) -> ModelViewer:
        from .loading import load_model

        model, processor = load_model(name_or_path, device, dtype)
        return cls(model, processor, noun=noun, categories=categories, name=name_or_path)

    @property
    def question(self) -> str:
        """The open-set question, as ``finedefics eval --mode open_set`` asks it."""
        return open_set_question(self.noun)

    @property
    def description_request(self) -> str:
        return describe_instruction(self.noun)

    def answers(self, image) -> tuple[str, str]:
        """(open-set answer, attribute description), greedy; the image is encoded once where the family allows."""
        shared = SharedBatch(self.model, self.processor, [image])
        answer = shared.greedy_answers([self.question], OPEN_SET_MAX_NEW_TOKENS)[0]
        description = shared.greedy_answers([self.description_request], DESCRIPTION_MAX_NEW_TOKENS)[0]
        return answer, description

    def top_categories(self, image, names: list[str], top_k: int = TOP_K) -> list[tuple[str, float]]:
        """``model.classify``'s top ``top_k`` names with their probabilities, best first."""
        result = self.model.classify(image, names, self.processor, top_k=top_k)
        return list(zip(result.labels[0], result.scores[0].tolist()))

    def look(self, path: str | Path | None, candidates: str | None) -> Look:
        """Everything the page shows for an uploaded file; bad input is a message, never an exception."""
        try:
            image = open_upload(path)
        except BadInput as error:
            return Look(message=str(error))
        try:
            answer, description = self.answers(image)
            look = Look(answer=answer, description=description)
            names = parse_candidates(candidates)
            look.named = next((name for name in names if names_match(answer, name)), None)
            try:
                check_candidates(names)
            except BadInput as error:
                look.message = f"{error} The answer and description need no list and are shown."
                return look
            look.top = self.top_categories(image, names)
            return look
        except Exception as error:  # the model failed on this image: say so in the page, keep serving
            logger.exception("finedefics app: the model failed on %s", Path(path).name)
            return Look(message=f"The model could not process this image ({type(error).__name__}: {error}).")


# ----------------------------------------------------------------------------- the page
def build_app(viewer: ModelViewer, title: str | None = None):
    """The Gradio ``Blocks`` of the app; ``.launch()`` serves it (on 127.0.0.1 unless given ``server_name``).

    One endpoint, ``/look`` (what the button and an upload run): ``(image, candidates) -> (message, answer,
    top-5 plot, description)``.
    """
    import gradio as gr
    import pandas as pd

    def upload_path(payload):
        """The uploaded file's path, unopened: a file that is no image (or a huge one) reaches :func:`open_upload`,
        which answers with a message, instead of failing inside Gradio's own image decoding."""
        return None if payload is None or payload.path is None else payload.path

    def plot_frame(top: list[tuple[str, float]]):
        # Typed columns: an empty frame's would be floats, and the plot's x axis then numeric.
        return pd.DataFrame({"category": pd.Series([name for name, _ in top], dtype=object),
                             "probability": pd.Series([score for _, score in top], dtype=float)})

    def run(path, candidates):
        look = viewer.look(path, candidates)
        message = look.message or f"Top-{len(look.top)} of {len(parse_candidates(candidates))} candidates."
        if look.named:
            message += f" The answer names the candidate **{look.named}**."
        return message, look.answer, plot_frame(look.top), look.description

    noun = viewer.noun
    # No analytics: Gradio's would phone home at start and on every launch; this app talks to nobody.
    with gr.Blocks(title=title or f"Finedefics: {viewer.name}", analytics_enabled=False) as app:
        gr.Markdown(f"# Finedefics: {viewer.name}\nUpload an image of one {noun.singular}. The model answers "
                    f"*{viewer.question}*, describes the {noun.singular} (*{viewer.description_request}*) and ranks "
                    "the candidate names by the similarity of their embeddings to the image's (`classify`).")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="filepath", sources=["upload"], height=320)
                # On the instance, not a subclass: Gradio writes a .pyi file beside any module subclassing a component.
                image.preprocess = upload_path
                candidates = gr.Textbox(
                    label=f"candidate names ({len(viewer.categories)} from the checkpoint; commas or line breaks)",
                    value="\n".join(viewer.categories), lines=6, max_lines=12)
                button = gr.Button("Look", variant="primary")
            with gr.Column():
                message = gr.Markdown(NO_IMAGE, elem_id="message")
                answer = gr.Textbox(label=f"answer to: {viewer.question}", elem_id="answer")
                plot = gr.BarPlot(None, x="category", y="probability", sort="-y", y_lim=[0, 1], x_label_angle=-20,
                                  label=f"top-{TOP_K} by embedding similarity", elem_id="top5", height=260)
                description = gr.Textbox(label=f"description: {viewer.description_request}", lines=3,
                                         elem_id="description")
        outputs = [message, answer, plot, description]
        button.click(run, [image, candidates], outputs, api_name="look")
        image.upload(run, [image, candidates], outputs, api_name=False)
    return app


# ----------------------------------------------------------------------------- a Hub Space
SPACE_APP = '''"""A Hugging Face Space showing the Finedefics model {model} (`finedefics app --write-space`)."""

from finedefics_eval.app import ModelViewer, build_app

# On a Space, Gradio binds the address the Space runtime gives it (GRADIO_SERVER_NAME).
build_app(ModelViewer.from_pretrained({model!r})).launch()
'''
SPACE_README = """---
title: {title}
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
---

The Finedefics model [{model}](https://huggingface.co/{model}): upload an image and see its answer to the open-set
question, the top-5 candidate categories by embedding similarity and its attribute description.
"""
# Where pip finds this package: it is not on PyPI, so a Space names its source (e.g. a git URL) instead.
DEFAULT_SPACE_PACKAGE = "finedefics[app]"


def write_space(model: str, folder: str | Path, package: str = DEFAULT_SPACE_PACKAGE,
                gradio_version: str = "6.31.0") -> list[Path]:
    """Write a Hub Space for ``model`` (a Hub id) into ``folder``: ``app.py``, ``requirements.txt`` (``package``:
    this package with its ``app`` extra, as pip finds it) and the ``README.md`` whose front matter makes it a
    Gradio Space. Upload the folder as a Space repository (``hf upload USER/SPACE folder --repo-type space``)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not an empty folder; choose a new one")
    if not model or Path(model).expanduser().exists():
        raise ValueError(f"a Space loads its model from the Hub: give the model's Hub id (USER/NAME), not the local "
                         f"folder {model!r} (push it first: finedefics push {model} --repo-id USER/NAME)")
    folder.mkdir(parents=True, exist_ok=True)
    files = {"app.py": SPACE_APP.format(model=model),
             "requirements.txt": f"{package}\n",
             "README.md": SPACE_README.format(title=f"Finedefics {model.split('/')[-1]}"[:60], model=model,
                                              gradio_version=gradio_version)}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]


__all__ = ["BadInput", "Look", "ModelViewer", "build_app", "check_candidates", "open_upload", "parse_candidates",
           "write_space"]
