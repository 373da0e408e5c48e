"""The `gristmill` command line."""

from __future__ import annotations

import argparse
import json
import sys

from gristmill import __version__, fs, service_cli
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
    why = commands.add_parser(
        "why", help="say which stage dropped a document and why, or where it was kept"
    )
    why.add_argument("doc_id", help="the document's id (as in its id column, or FILE:LINE)")
    where = why.add_mutually_exclusive_group(required=True)
    where.add_argument("--drops", help="a writer's drops_path (directory or URL)")
    where.add_argument("--job", help="a service job (asks the service)")
    why.add_argument("--state-dir", help="the service's state (with --job)")
    why.add_argument("--team", help="the team (with --job; default: the credentials')")
    why.add_argument("--credentials", metavar="FILE", help="the team's credentials (with --job)")
    deploy = commands.add_parser(
        "deploy", help="write configuration for a multi-machine deployment"
    )
    targets = deploy.add_subparsers(dest="target", required=True)
    nats = targets.add_parser(
        "files", help="NATS cluster configs and the components' secrets, from the teams"
    )
    nats.add_argument("--out", required=True, help="directory to write them to")
    nats.add_argument("--nodes", type=int, default=3, help="servers in the cluster (default 3)")
    nats.add_argument("--host", default="nats-{n}", help="server n's name ({n} from 1, {i} from 0)")
    nats.add_argument("--teams-file", help="the teams file (default: GRISTMILL_TEAMS_FILE)")
    nats.add_argument("--credentials-dir", help="default: GRISTMILL_CREDENTIALS_DIR")
    service_cli.add_commands(commands)
    return parser


def _deploy_files(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from gristmill.config import state_dir
    from gristmill.deploy import write_deploy_files
    from gristmill.teams import TeamsConfig

    teams_file = args.teams_file or os.environ.get("GRISTMILL_TEAMS_FILE")
    names = tuple(t for t in os.environ.get("GRISTMILL_TEAMS", "default").split(",") if t)
    teams = TeamsConfig.load(teams_file) if teams_file else TeamsConfig.of_names(names)
    directory = args.credentials_dir or os.environ.get("GRISTMILL_CREDENTIALS_DIR")
    credentials = Path(directory) if directory else state_dir() / "credentials"
    for path in write_deploy_files(Path(args.out), teams, credentials, args.nodes, args.host):
        print(path)
    print(f"teams' credentials (hand each team its own): {credentials}/<team>.creds")
    return 0


def _why(doc_id: str, drops_path: str) -> int:
    found = False
    for path in fs.expand_paths(drops_path, [".jsonl"], "gristmill why"):
        for line in fs.read_bytes(path).decode().splitlines():
            record = json.loads(line)
            if record["id"] != doc_id:
                continue
            found = True
            print(service_cli.describe_fate(doc_id, record))
    if not found:
        print(f"{doc_id}: no drop record under {drops_path}")
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for a user error gristmill can explain; `why`
    returns 1 when it finds no record)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "stages":
            names = registered_stage_names()
            print("\n".join(names) if names else "no stages registered")
        elif args.command == "describe":
            pipeline = Pipeline.from_spec(args.spec)
            print(pipeline.build(fuse=not args.no_fuse).describe())
        elif args.command == "deploy":
            return _deploy_files(args)
        elif args.command == "why" and args.job is None:
            return _why(args.doc_id, args.drops)
        elif args.command in (*service_cli.COMMANDS, "why"):
            return service_cli.run_command(args)
    except GristmillError as exc:
        print(f"gristmill: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
