"""``lora101 model prepare`` and ``lora101 model info``: the base model's offline cache."""

from __future__ import annotations

import json

from lora101 import models


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="prepare or describe the base model")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    prepare = actions.add_parser("prepare", help="convert the bundled model into the cache (once)")
    prepare.add_argument("name", nargs="?", default=models.DEFAULT_MODEL)
    prepare.add_argument("--force", action="store_true", help="rebuild even if the cache is intact")
    prepare.set_defaults(func=_prepare)

    info = actions.add_parser("info", help="where the model is, its size, whether it is ready")
    info.add_argument("name", nargs="?", default=models.DEFAULT_MODEL)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_info)


def _prepare(args) -> int:
    try:
        path = models.prepare_model(args.name, force=args.force)
    except (models.ModelNotAvailableError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print(f"{args.name} is ready in {path}")
    return 0


def _info(args) -> int:
    try:
        info = models.model_info(args.name)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            if key == "bytes_on_disk":
                value = f"{value / 1e6:.1f} MB"
            elif key == "parameters":
                value = f"{value:,}"
            print(f"{key:<{width}}  {value}")
    return 0 if info.get("ready") is not False else 1
