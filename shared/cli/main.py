"""Entry point of the ``tradeloop`` command."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from shared.cli import commands, ingest_commands
from shared.cli.report import run_report
from shared.settings import ServiceSettings, load_settings
from shared.streams import Stream


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradeloop", description="Keep trading models fresh.")
    sub = parser.add_subparsers(dest="command", required=True)
    who = f"cli:{getpass.getuser()}"

    retrain = sub.add_parser("retrain", help="publish RetrainModel")
    retrain.add_argument("--market", default="BTC-EUR")
    retrain.add_argument("--timeframe", default="1m")
    retrain.add_argument("--family", default="xgboost", choices=["xgboost", "cnn"])
    retrain.add_argument("--pattern", default=None)
    retrain.add_argument("--min-samples", type=int, default=None)
    retrain.add_argument("--window-days", type=int, default=None)
    retrain.add_argument("--horizon", type=int, default=None)
    retrain.add_argument("--idempotency-key", default=None)
    retrain.add_argument("--requested-by", default=who)
    retrain.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait for the result")
    retrain.set_defaults(run=commands.retrain)

    activate = sub.add_parser("activate", help="publish ActivateModel")
    activate.add_argument("version")
    activate.add_argument("--reason", default="")
    activate.add_argument("--requested-by", default=who)
    activate.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    activate.set_defaults(run=commands.activate)

    rollback = sub.add_parser("rollback", help="publish RollbackModel (previous champion or --to VERSION)")
    rollback.add_argument("--slot", required=True, help="e.g. xgboost:BTC-EUR:1m")
    rollback.add_argument("--to", default=None, metavar="VERSION")
    rollback.add_argument("--reason", default="")
    rollback.add_argument("--requested-by", default=who)
    rollback.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    rollback.set_defaults(run=commands.rollback)

    shadow = sub.add_parser("shadow", help="add or remove a shadow challenger")
    shadow.add_argument("action", choices=["add", "remove"])
    shadow.add_argument("version")
    shadow.add_argument("--reason", default="")
    shadow.add_argument("--requested-by", default=who)
    shadow.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    shadow.set_defaults(run=commands.shadow)

    archive = sub.add_parser("archive", help="publish ArchiveModel")
    archive.add_argument("version")
    archive.add_argument("--reason", default="")
    archive.add_argument("--requested-by", default=who)
    archive.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    archive.set_defaults(run=commands.archive)

    models = sub.add_parser("models", help="list versions with metrics and champion flag")
    models.add_argument("--slot", default=None)
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=commands.models)

    sub.add_parser("history", help="activation history").set_defaults(run=commands.history)
    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(run=commands.migrate)

    dlq = sub.add_parser("dlq", help="show a stream's dead letters")
    dlq.add_argument("stream", choices=[s.value for s in Stream])
    dlq.add_argument("--count", type=int, default=20)
    dlq.set_defaults(run=commands.dead_letters)

    report = sub.add_parser("report", help="write an HTML report: versions, live accuracy and P&L, backtests")
    report.add_argument("--out", default="report.html", help="HTML file to write")
    report.add_argument("--slot", default=None, help="only this slot, e.g. xgboost:BTC-EUR:1m")
    report.set_defaults(run=run_report)

    demo = sub.add_parser("demo", help="run the whole loop end to end locally")
    demo.add_argument("--seconds", type=float, default=12.0, help="seconds of live candle flow")
    demo.add_argument("--data-dir", default="var/demo", help="wiped and reused by every demo run")
    demo.add_argument("--redis-db", type=int, default=15, help="Redis database of REDIS_URL the demo uses")
    demo.set_defaults(run=None)
    ingest_commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from shared.cli.demo import run_demo

        return run_demo(args)
    settings = load_settings(ServiceSettings)
    result: int = args.run(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
