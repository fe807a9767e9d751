"""``finedefics push CHECKPOINT --repo-id USER/NAME``: stage a merged checkpoint with its model card and upload it."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a merged checkpoint, its processor, code files and model card to a Hugging Face Hub repo",
        description=(
            "Stage CHECKPOINT (a merged Finedefics checkpoint of any model family with safetensors weights, e.g. a "
            "stage output's final/ folder; its family's code files and auto_map come along) with a "
            "model card filled from the eval report and training recipe, then upload it "
            "with huggingface_hub. The token comes from --token, HF_TOKEN or `hf auth login`; the Hub from "
            "HF_ENDPOINT (default https://huggingface.co)."
        ),
    )
    parser.add_argument("checkpoint", help="merged checkpoint folder (config.json, *.safetensors, processor files)")
    parser.add_argument("--repo-id", required=True, help="target repo, USER/NAME or ORG/NAME (created if missing)")
    parser.add_argument("--private", action="store_true",
                        help="create the repo as private (no effect on an existing repo)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--create-pr", action="store_true",
                        help="open a pull request against main instead of committing")
    parser.add_argument("--report", default=None, help="eval report: report.json or the folder holding it")
    parser.add_argument("--recipe", default=None, help="training recipe YAML to show in the model card")
    parser.add_argument("--base-model", default=None,
                        help="Hub id of the model it was trained from (default: the recipe's model_name_or_path)")
    parser.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--commit-message", default=None,
                        help="commit message (default: 'Upload Finedefics checkpoint')")
    parser.add_argument("--stage-only", metavar="DIR", default=None,
                        help="write the staged folder to DIR (must be empty) and upload nothing")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="stage the checkpoint's own code files and import them to check the staged folder "
                             "(default: stage the installed package's code files and import nothing from the "
                             "checkpoint; see docs/SECURITY.md)")
    parser.add_argument("--stock", action="store_true",
                        help="upload the stock export instead (`finedefics export CHECKPOINT --stock`: the stock "
                             "family's checkpoint, no remote code, for vLLM / SGLang), best to its own repo, e.g. "
                             "USER/NAME-stock; --revision puts it on a branch of the Finedefics repo instead")
    parser.set_defaults(func=run)


def run(args) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from finedefics_training.push import (
        DEFAULT_COMMIT_MESSAGE,
        check_target,
        push_to_hub,
        resolve_token,
        stage_for_hub,
        staged_files,
    )

    stage = dict(report=args.report, recipe=args.recipe, base_model=args.base_model, validate=True,
                 repo_id=args.repo_id, trust_remote_code=args.trust_remote_code)
    stage_folder = _stock_export if args.stock else stage_for_hub
    if args.stock:
        _check_stock_arguments(args)
    if args.stage_only:
        staging = stage_folder(args.checkpoint, args.stage_only, **stage)
        print(f"staged {len(staged_files(staging))} files in {staging} (nothing uploaded)")
        return 0
    # Refuse bad targets and a missing token before staging, which may copy gigabytes.
    check_target(args.repo_id, args.revision, args.create_pr)
    token = resolve_token(args.token)
    default_message = STOCK_COMMIT_MESSAGE if args.stock else DEFAULT_COMMIT_MESSAGE
    with _staging_folder(args.checkpoint) as tmp:
        staging = stage_folder(args.checkpoint, tmp, **stage)
        try:
            result = push_to_hub(staging, args.repo_id, token=token, private=args.private, revision=args.revision,
                                 create_pr=args.create_pr, commit_message=args.commit_message or default_message)
        except (ConnectionError, HfHubHTTPError) as error:  # the Hub failed us: not bad input, still one line
            print(f"finedefics push: error: {str(error).splitlines()[0]}", file=sys.stderr)
            return 1
    print(f"uploaded {len(result['files'])} files to {result['repo_url']} ({result['revision']})")
    print(f"pull request: {result['pr_url']}" if result["pr_url"] else f"commit: {result['commit_url']}")
    return 0


STOCK_COMMIT_MESSAGE = "Upload stock export of a Finedefics checkpoint"


def _check_stock_arguments(args) -> None:
    """The stock export writes its own card (what it can and cannot do): the Finedefics card's inputs have no
    place in it, and taking them silently would drop them."""
    given = [flag for flag, value in (("--report", args.report), ("--recipe", args.recipe),
                                      ("--base-model", args.base_model)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} fill the Finedefics model card; the stock export (--stock) writes its "
                         "own card: push without them")


def _stock_export(checkpoint, staging, **_card_inputs):
    """The stock export of ``checkpoint`` as the folder to upload (its README.md is the export's own card)."""
    from pathlib import Path

    from finedefics_training.export import export_stock

    export_stock(checkpoint, staging)
    return Path(staging)


def _staging_folder(checkpoint: str):
    """A temporary folder beside the checkpoint (same filesystem, so weights are hard-linked), else in /tmp."""
    import tempfile
    from pathlib import Path

    try:
        return tempfile.TemporaryDirectory(prefix=".finedefics-push-", dir=Path(checkpoint).resolve().parent)
    except OSError:  # read-only parent folder
        return tempfile.TemporaryDirectory(prefix="finedefics-push-")
