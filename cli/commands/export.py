"""``finedefics export CKPT --stock OUT``: a Finedefics checkpoint (or LoRA adapter folder) as its stock family's
checkpoint, which transformers, vLLM and SGLang load without remote code."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a Finedefics checkpoint as its stock family's checkpoint (no remote code), for serving",
        description=(
            "Write CKPT (a Finedefics checkpoint of any family, or a LoRA adapter folder, merged first) as the stock "
            "checkpoint of its family (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL or LLaVA): stock model_type "
            "and architecture, no auto_map, safetensors weights, the stock processor, chat template and generation "
            "config. The contrastive-only parameters and settings (temperatures, projection heads, summary token) "
            "are left out and listed in OUT/export_report.json and OUT/README.md: the export generates text as "
            "CKPT does, but cannot classify or give embeddings."
        ),
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="Finedefics checkpoint folder or LoRA adapter folder")
    parser.add_argument("--stock", metavar="OUT", required=True,
                        help="folder to write the stock checkpoint to (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_training.export import export_stock

    report = export_stock(args.checkpoint, args.stock, overwrite=args.overwrite)
    print(report.summary())
    print(f"written to {args.stock} (export_report.json and README.md say what was left out)")
    return 0
