"""``finedefics convert SOURCE OUTPUT``: a stock checkpoint of a supported family (Idefics2, Idefics3, SmolVLM,
Qwen2-VL, Qwen2.5-VL, LLaVA) or the Finedefics-release folder -> a Finedefics checkpoint of the same family."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a stock checkpoint folder (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA) or the "
             "Finedefics release into a Finedefics checkpoint",
        description=(
            "Convert a stock checkpoint of a supported family (Idefics2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL or "
            "LLaVA: its weights are kept and fresh alignment parameters are added; the output is that family's "
            "Finedefics checkpoint, with its code files) or the official Finedefics release layout (Idefics2: "
            "temperatures carried over, unused projectors dropped). Every dropped or unmapped key is listed; the "
            "report is also written to OUTPUT/conversion_report.json."
        ),
    )
    parser.add_argument("source", help="checkpoint folder with config.json and .safetensors weights")
    parser.add_argument("output", help="folder to write the Finedefics checkpoint to")
    parser.add_argument("--summary-token-id", type=int, default=None,
                        help="token pooled for embeddings (default: the source tokenizer's EOS)")
    parser.add_argument("--init-temperature", type=float, default=0.07,
                        help="temperature of alignment parameters the source lacks (default 0.07)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from finedefics_training.convert import convert_checkpoint

    report = convert_checkpoint(
        args.source, args.output, summary_token_id=args.summary_token_id, init_temperature=args.init_temperature
    )
    print(report.summary())
    if report.unmapped:
        print(f"warning: {len(report.unmapped)} key(s) could not be mapped and were not written (listed above)")
    return 0
