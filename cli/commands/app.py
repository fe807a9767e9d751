"""``finedefics app MODEL``: a Gradio app showing what a model makes of an uploaded image (``finedefics_eval.app``).

Binds 127.0.0.1 unless ``--host`` / ``--share`` say otherwise; Gradio keeps uploads in a fresh temporary folder,
removed when the app stops. ``--write-space DIR`` writes a Hub Space (app.py, requirements.txt, README.md)
for a model on the Hub instead of serving.
"""

from __future__ import annotations

import os


def register(subparsers) -> None:
    from .noun_arguments import add_noun_arguments

    parser = subparsers.add_parser(
        "app",
        help="a Gradio app: upload an image, see the open-set answer, the top-5 categories and the description",
        description=(
            "Serve a Gradio app for MODEL (a checkpoint folder or Hub id): an uploaded image gets the model's answer "
            "to the open-set question (as `finedefics eval --mode open_set` asks it), the top-5 candidate "
            "categories by embedding similarity (model.classify) as a bar plot, and the model's attribute "
            "description. The candidates are the categories the checkpoint was trained on (config.object_categories), "
            "editable in the page. Needs the app extra: pip install -e '.[app]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or Hub id of a Finedefics model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public gradio.live link (Gradio's tunnel; needs the internet)")
    parser.add_argument("--categories", metavar="FILE",
                        help="candidate names instead of the checkpoint's: a text file, names by line or comma")
    add_noun_arguments(parser, "default: the checkpoint's config.object_noun, else 'object'")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--write-space", metavar="DIR",
                        help="write a Hub Space for MODEL (a Hub id) into DIR (app.py, requirements.txt, README.md) "
                             "and exit, serving nothing")
    parser.add_argument("--space-package", default=None, metavar="REQUIREMENT",
                        help="the requirements.txt line that installs this package in the Space (default "
                             "'finedefics[app]'; it is not on PyPI: e.g. 'finedefics[app] @ git+https://...')")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.write_space:
        return _write_space(args)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the app needs Gradio: pip install -e '.[app]'") from None
    import shutil
    import tempfile

    from finedefics_eval.app import ModelViewer, build_app

    from .noun_arguments import noun_from_arguments

    categories = _read_categories(args.categories) if args.categories else None
    viewer = ModelViewer.from_pretrained(args.model, args.device, args.dtype, noun=noun_from_arguments(args),
                                         categories=categories)
    if not viewer.categories:
        print(f"{args.model} records no categories (config.object_categories): type candidate names in the page, "
              "or give --categories FILE")
    # Gradio stores every upload in its upload folder: a fresh temporary one, removed on exit.
    upload_dir = None
    if "GRADIO_TEMP_DIR" not in os.environ:
        upload_dir = tempfile.mkdtemp(prefix="finedefics-app-uploads-")
        os.environ["GRADIO_TEMP_DIR"] = upload_dir
    try:
        app = build_app(viewer)
        print(f"{len(viewer.categories)} candidate categories; serving on "
              f"http://{args.host}:{args.port} (Ctrl+C stops)")
        app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False)
    finally:
        if upload_dir:
            shutil.rmtree(upload_dir, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)
    return 0


def _read_categories(path: str) -> list[str]:
    from pathlib import Path

    from finedefics_eval.app import parse_candidates

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"categories file not found: {file}")
    names = parse_candidates(file.read_text(encoding="utf-8"))
    if not names:
        raise ValueError(f"{file} names no category (names by line or separated by commas)")
    return names


def _write_space(args) -> int:
    from finedefics_eval.app import DEFAULT_SPACE_PACKAGE, write_space

    written = write_space(args.model, args.write_space, package=args.space_package or DEFAULT_SPACE_PACKAGE)
    print(f"Space for {args.model} written: {', '.join(str(path) for path in written)}")
    print(f"upload it with: hf upload USER/SPACE {args.write_space} --repo-type space")
    return 0
