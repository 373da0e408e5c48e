"""The `gristmill` command line."""

from __future__ import annotations

import argparse
import sys

from gristmill import __version__
from gristmill.errors import GristmillError
from gristmill.pipeline import Pipeline
from gristmill.stages import registered_stage_names

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gristmill", description="Curate training data: pipelines of stages on any executor."
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stages", help="list the stage names pipeline specs may use")
    describe = commands.add_parser("describe", help="check a pipeline spec and print its plan")
    describe.add_argument("spec", help="path of a pipeline spec (YAML)")
    describe.add_argument("--no-fuse", action="store_true", help="show the plan without fusion")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for a user error gristmill can explain)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "stages":
            names = registered_stage_names()
            print("\n".join(names) if names else "no stages registered")
        elif args.command == "describe":
            pipeline = Pipeline.from_spec(args.spec)
            print(pipeline.build(fuse=not args.no_fuse).describe())
    except GristmillError as exc:
        print(f"gristmill: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
