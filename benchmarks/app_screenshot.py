"""`finedefics app` as a person sees it: serve a model, upload a synthetic benchmark image in headless Chromium,
wait for the result, save a screenshot, and time the model's work per image.

    python benchmarks/app_screenshot.py                                   # the shipped demo base
    python benchmarks/app_screenshot.py CKPT --output shot.png --label 5 --index 0

The browser is the system's Chromium (Debian's `chromium`, /usr/bin/chromium) driven by Playwright's Python package
through ``executable_path``: nothing downloads a browser, and every request the page makes outside 127.0.0.1 is
blocked. ``tests/test_app.py`` drives the app with the same helpers.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

CHROMIUM = Path(os.environ.get("FINEDEFICS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The demo base's own synthetic benchmark (its build recipe's data settings).
DEMO_BASE = Path(__file__).resolve().parents[1] / "training" / "demo_base"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(viewer, port: int | None = None):
    """``(app, url)``: the app of ``viewer`` served on 127.0.0.1 in a background thread (``app.close()`` stops)."""
    from finedefics_eval.app import build_app

    app = build_app(viewer)
    port = port or free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=False)
    return app, f"http://127.0.0.1:{port}/"


def _local_only(route):
    """Let the page reach the app on 127.0.0.1 only: fonts, analytics or anything else outside are refused."""
    url = route.request.url
    if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
        return route.continue_()
    return route.abort()


def browser_look(url: str, image: Path, screenshot: Path, profile_dir: Path, timeout_s: float = 60.0) -> dict:
    """Open the app in headless Chromium, upload ``image``, wait for the answer, save ``screenshot``.

    Returns what the page shows: ``message``, ``answer``, ``description``, ``plot_axis`` (the bar plot's x axis as
    the page describes it to a screen reader: the categories of its bars) and ``seconds`` (upload to answer)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            browser.route("**/*", _local_only)
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
            start = time.perf_counter()
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.wait_for_function("() => document.querySelector('#answer textarea')?.value.length > 0 && "
                                   "document.querySelector('#description textarea')?.value.length > 0",
                                   timeout=timeout_s * 1000)
            seconds = time.perf_counter() - start
            page.wait_for_timeout(800)  # the bar plot draws after its data arrive
            page.screenshot(path=str(screenshot), full_page=True)
            axis = page.locator('#top5 [aria-roledescription="axis"]').first.get_attribute("aria-label")
            return {"message": page.locator("#message").inner_text(), "plot_axis": axis,
                    "answer": page.locator("#answer textarea").input_value(),
                    "description": page.locator("#description textarea").input_value(), "seconds": seconds}
        finally:
            browser.close()


def demo_benchmark_image(folder: Path, label: int = 3, index: int = 0) -> tuple[Path, str]:
    """Image ``index`` of category ``label`` in the test split of the demo base's synthetic benchmark, as a PNG in
    ``folder``; returns (path, category name)."""
    import json

    from finedefics_data.synth import SynthConfig, sample_image
    from finedefics_data.synth.vocabulary import build_categories

    settings = json.loads((DEMO_BASE / "build.json").read_text())["recipe"]["data"]["synthetic"]
    config = SynthConfig(**settings)
    category = build_categories(config)[label]
    image, _, _ = sample_image(category, "test", index, config)
    path = Path(folder) / f"{category['name'].replace(' ', '_')}_test_{index}.png"
    image.save(path)
    return path, category["name"]


def main() -> None:
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=os.path.relpath(DEMO_BASE))
    parser.add_argument("--output", default="docs/images/app_demo_base.png")
    parser.add_argument("--label", type=int, default=3, help="category of the synthetic benchmark image")
    parser.add_argument("--index", type=int, default=0, help="its index in the test split")
    parser.add_argument("--repeats", type=int, default=3, help="timed looks at the image without the browser")
    args = parser.parse_args()

    from finedefics_eval.app import ModelViewer

    with tempfile.TemporaryDirectory(prefix="finedefics-app-shot-") as work:
        work = Path(work)
        os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "uploads"))
        start = time.perf_counter()
        viewer = ModelViewer.from_pretrained(args.model, device="cpu")
        print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s; {len(viewer.categories)} candidates")
        image, name = demo_benchmark_image(work, args.label, args.index)
        candidates = "\n".join(viewer.categories)
        for _ in range(args.repeats):
            start = time.perf_counter()
            look = viewer.look(image, candidates)
            print(f"one image, model only: {time.perf_counter() - start:.2f} s")
        print(f"true category {name!r}; top-5 {[(n, round(s, 3)) for n, s in look.top]}")
        app, url = serve(viewer)
        try:
            shown = browser_look(url, image, Path(args.output), work / "chromium-profile", timeout_s=300)
        finally:
            app.close()
        print(f"browser: upload to answer {shown['seconds']:.1f} s; screenshot {args.output}")
        print(f"message: {shown['message']!r}\nanswer: {shown['answer']!r}\ndescription: {shown['description']!r}")


if __name__ == "__main__":
    main()
