"""``tritonbasis convert``: the conversion report of a model under a plan (or one spec for
every candidate conv)."""

from __future__ import annotations

from ..util.fileio import atomic_write_text
from .common import add_model_args, plan_from_args
from .guard import positive_int


def add_parser(sub) -> None:
    c = sub.add_parser("convert", help="print the conversion report of a model and a plan")
    add_model_args(c)
    c.add_argument("--image-size", type=positive_int, default=32, help="input size for MACs (32)")
    c.add_argument("--json", default=None, help="also write the report as JSON here")


def run(args) -> int:
    from ..conversion.convert import convert_with_report
    from ..recipes.models import get_model

    plan = plan_from_args(args)
    if plan is None:
        raise SystemExit("convert needs --plan PLAN.json or --ratio R")
    model = get_model(args.model, num_classes=args.num_classes, width=args.width)
    shape = (3, args.image_size, args.image_size)
    _, report = convert_with_report(model, plan, input_shape=shape, inplace=True)
    print(
        f"{args.model} (width {args.width}) at {args.image_size}x{args.image_size}, "
        f"plan: {args.plan or f'ratio {args.ratio}'}"
    )
    print(report.table())
    if args.json:
        atomic_write_text(args.json, report.to_json(indent=1))
        print(f"report written to {args.json}")
    return 0
