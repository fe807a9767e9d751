"""`finedefics app`, used as a person uses it: served on localhost, driven through gradio_client and in headless
Chromium (Debian's `chromium`, through Playwright with the system browser), on a tiny checkpoint whose config
records the categories it was trained on."""

import importlib.util
import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TEST_CORPUS

pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[test]'")

spec = importlib.util.spec_from_file_location("app_screenshot", REPO_ROOT / "benchmarks" / "app_screenshot.py")
app_screenshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_screenshot)

NUM_CATEGORIES = 8


def _synth_config():
    from finedefics_data.synth import SynthConfig

    return SynthConfig(num_genera=2, species_per_genus=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A micro checkpoint trained on nothing but recording the synthetic benchmark's categories, served on a free
    localhost port; uploads go to a temporary folder of the test's."""
    from finedefics_data.synth.vocabulary import build_categories
    from finedefics_eval.app import ModelViewer
    from modeling_finedefics.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("app")
    names = [category["name"] for category in build_categories(_synth_config())]
    processor = build_tiny_processor(build_tiny_tokenizer(TEST_CORPUS + names))
    model = build_tiny_model(processor, preset="micro", seed=0)
    model.config.object_noun, model.config.object_noun_plural = "bird", "birds"
    model.config.object_categories = sorted(names)
    model.save_pretrained(folder / "checkpoint")
    processor.save_pretrained(folder / "checkpoint")
    uploads = folder / "uploads"
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    viewer = ModelViewer.from_pretrained(str(folder / "checkpoint"), device="cpu")
    app, url = app_screenshot.serve(viewer)
    try:
        yield viewer, url, folder, uploads
    finally:
        app.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


def _benchmark_image(folder: Path, label: int = 2):
    from finedefics_data.synth import sample_image
    from finedefics_data.synth.vocabulary import build_categories

    category = build_categories(_synth_config())[label]
    image, _, _ = sample_image(category, "test", 0, _synth_config())
    path = folder / f"test_{label}.png"
    image.save(path)
    return path


def _look(client, path, candidates):
    from gradio_client import handle_file

    message, answer, plot, description = client.predict(handle_file(str(path)), candidates, api_name="/look")
    rows = plot["data"] if plot else []
    names = [column for column in (plot or {}).get("columns", [])]
    top = [(row[names.index("category")], row[names.index("probability")]) for row in rows]
    return message, answer, top, description


def test_gradio_client_sees_the_models_answer_and_top5(served):
    """Upload a synthetic benchmark image: the page's answer is the open-set mode's, its top-5 is model.classify's."""
    from gradio_client import Client
    from PIL import Image

    from finedefics_data.prompts import ObjectNoun, open_set_question
    from finedefics_eval.foci import OptionExample
    from finedefics_eval.scoring import OpenSetScorer, PreparedExample

    viewer, url, folder, uploads = served
    path = _benchmark_image(folder)
    client = Client(url, verbose=False)
    candidates = "\n".join(viewer.categories)
    message, answer, top, description = _look(client, path, candidates)

    image = Image.open(path).convert("RGB")
    model, processor = viewer.model, viewer.processor
    assert len(viewer.categories) == NUM_CATEGORIES  # read from the checkpoint's config.object_categories
    expected = model.classify(image, viewer.categories, processor, top_k=5)
    assert [name for name, _ in top] == expected.labels[0]
    assert [score for _, score in top] == pytest.approx(expected.scores[0].tolist(), abs=1e-5)
    # The open-set mode of `finedefics eval`, with the question it asks for the checkpoint's noun.
    question = open_set_question(ObjectNoun.from_config(model.config))
    scorer = OpenSetScorer(model, processor, question, viewer.categories)
    item = PreparedExample(OptionExample("0", str(path), viewer.categories[0], viewer.categories[:4]),
                           viewer.categories[:4], question)
    assert answer == scorer.score([image], [item])[0]["predicted_raw"]
    assert answer and description  # the tiny model says something
    assert message.startswith(f"Top-5 of {NUM_CATEGORIES} candidates")
    # Gradio kept the upload in the app's temporary folder, and nowhere next to the image.
    assert any(uploads.rglob(path.name))
    assert [p for p in folder.rglob(path.name) if uploads not in p.parents] == [path]
    import finedefics_eval

    assert not list(Path(finedefics_eval.__file__).parent.glob("*.pyi"))  # Gradio writes these for new components


def test_bad_input_gets_a_message_and_the_server_keeps_serving(served):
    from gradio_client import Client
    from PIL import Image

    from finedefics_eval.app import MAX_PIXELS

    viewer, url, folder, _ = served
    client = Client(url, verbose=False)
    text = folder / "notes.txt"
    text.write_text("not a picture\n")
    huge = folder / "huge.png"
    side = int(MAX_PIXELS ** 0.5) + 100
    Image.new("L", (side, side)).save(huge)  # a few kB of PNG, 50 megapixels decoded
    image = _benchmark_image(folder)
    good = ",".join(viewer.categories)

    message, answer, top, _ = _look(client, text, good)
    assert "notes.txt is not an image" in message and not answer and not top
    message, answer, top, _ = _look(client, huge, good)
    assert f"{side} x {side} pixels" in message and "megapixels" in message and not answer and not top
    message, answer, top, description = _look(client, image, " , \n ")
    assert "candidate list is empty" in message and not top and answer and description
    message, answer, top, _ = _look(client, image, viewer.categories[0])
    assert "one name" in message and not top and answer
    for message in (_look(client, path, good)[0] for path in (text, huge)):
        assert "Traceback" not in message and "File \"" not in message
    # Still serving: a good request after the bad ones.
    message, answer, top, _ = _look(client, image, good)
    assert message.startswith("Top-5") and len(top) == 5 and answer


def test_parse_candidates_splits_on_commas_and_lines_once_each():
    from finedefics_eval.app import parse_candidates

    assert parse_candidates("Corvel Tit, Mirel Finch\n Corvel Tit \n\n,") == ["Corvel Tit", "Mirel Finch"]
    assert parse_candidates(None) == []


def test_trainer_records_the_categories_it_trained_on(micro_model, tiny_processor):
    """The checkpoint's candidates: FinedeficsTrainer writes the data's category names into the config, adding to
    those an earlier stage recorded."""
    from datasets import Dataset

    from finedefics_training.trainer import _record_categories

    micro_model.config.object_categories = ["Mirel Finch"]
    rows = Dataset.from_list([{"category": name} for name in ("Velmoran Thistlewing", "", "Corvel Tit",
                                                                 "Velmoran Thistlewing")])
    _record_categories(micro_model, rows)
    assert micro_model.config.object_categories == ["Corvel Tit", "Mirel Finch", "Velmoran Thistlewing"]
    assert micro_model.config.to_dict()["object_categories"] == micro_model.config.object_categories


def test_write_space(tmp_path):
    from finedefics_cli import main

    assert main(["app", "user/finedefics-birds", "--write-space", str(tmp_path / "space")]) == 0
    app_py = (tmp_path / "space" / "app.py").read_text()
    compile(app_py, "app.py", "exec")
    assert "ModelViewer.from_pretrained('user/finedefics-birds')" in app_py
    assert (tmp_path / "space" / "requirements.txt").read_text().strip() == "finedefics[app]"
    assert "sdk: gradio" in (tmp_path / "space" / "README.md").read_text()
    assert main(["app", str(tmp_path), "--write-space", str(tmp_path / "space2")]) == 2  # a local folder


@pytest.mark.skipif(not app_screenshot.CHROMIUM.is_file(),
                    reason=f"no browser: {app_screenshot.CHROMIUM} is absent (Debian: apt-get install -y chromium; "
                           ".ci/run installs it)")
def test_headless_chromium_uploads_an_image_and_sees_the_result(served, tmp_path):
    pytest.importorskip("playwright", reason="playwright's Python package (the test extra) is not installed")
    viewer, url, folder, _ = served
    image = _benchmark_image(folder, label=5)
    screenshot = tmp_path / "app.png"
    shown = app_screenshot.browser_look(url, image, screenshot, tmp_path / "profile")
    expected_answer, expected_description = viewer.answers(_rgb(image))
    assert shown["answer"] == expected_answer and shown["description"] == expected_description
    assert shown["message"].startswith(f"Top-5 of {NUM_CATEGORIES} candidates")
    top = viewer.top_categories(_rgb(image), viewer.categories)
    assert "discrete scale with 5 values" in shown["plot_axis"]  # five bars, one per category
    assert all(name in shown["plot_axis"] for name, _ in top)
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rgb(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_the_command_binds_localhost_and_keeps_uploads_in_a_temporary_folder(served, monkeypatch, capsys):
    """`finedefics app CKPT` launches on 127.0.0.1 (launch is recorded, not run: it would serve until stopped), with
    Gradio's upload folder a fresh temporary one, removed on exit; --host and --share are passed on."""
    import gradio

    from finedefics_cli import main

    _, _, folder, _ = served
    launched = []

    def launch(app, **kwargs):
        launched.append({**kwargs, "uploads": os.environ["GRADIO_TEMP_DIR"]})

    monkeypatch.setattr(gradio.Blocks, "launch", launch)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    assert main(["app", str(folder / "checkpoint"), "--port", "7999"]) == 0
    assert launched[0]["server_name"] == "127.0.0.1" and launched[0]["server_port"] == 7999
    assert not launched[0]["share"]
    assert Path(launched[0]["uploads"]).name.startswith("finedefics-app-uploads-")
    assert not Path(launched[0]["uploads"]).exists() and "GRADIO_TEMP_DIR" not in os.environ
    assert main(["app", str(folder / "checkpoint"), "--host", "0.0.0.0", "--share"]) == 0
    assert launched[1]["server_name"] == "0.0.0.0" and launched[1]["share"]
    names = folder / "names.txt"
    names.write_text("Corvel Tit, Mirel Finch\nAshcombe Reedhopper\n")
    capsys.readouterr()
    assert main(["app", str(folder / "checkpoint"), "--categories", str(names)]) == 0
    assert "3 candidate categories" in capsys.readouterr().out
    names.write_text(" ,\n")
    assert main(["app", str(folder / "checkpoint"), "--categories", str(names)]) == 2
    assert "names no category" in capsys.readouterr().err
    assert main(["app", str(folder / "no-such-checkpoint")]) == 2
    assert "does not exist" in capsys.readouterr().err
