"""``science-gateway``: the client from a shell. Every command takes ``--json``; the exit code says how it ended.

Exit codes: 0 done (or the command succeeded), 1 the job failed or was cancelled, 2 a usage error (no
``GATEWAY_URL``, a bad argument), 3 refused by the gateway (4xx, its message on stderr), 4 the gateway
unavailable (no connection, 5xx after the retries, or an answer that is no gateway's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import requests

from . import __version__
from .errors import ConfigurationError, GatewayClientError, GatewayRefused, GatewayUnavailable, JobUnsuccessful, unsuccessful
from .gateway import Gateway
from .options import DEFAULT_RETRY_FOR

EXIT_DONE, EXIT_JOB_UNSUCCESSFUL, EXIT_USAGE, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


class UsageError(Exception):
    """A command line the client cannot run: exit code 2."""


def parameter(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``: the value as JSON where it parses as JSON (``7``, ``[2000,2000]``, ``true``, ``"7"``), else the string itself."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"a parameter is NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (the gateway's records and answers) instead of text")
    common.add_argument("--url", help="the gateway's address (default: $GATEWAY_URL); the token is $JUPYTERHUB_API_TOKEN")
    common.add_argument(
        "--retry-for", type=float, default=DEFAULT_RETRY_FOR, metavar="SECONDS",
        help=f"how long to retry a request the gateway refuses with 429 or 503, or that gets no answer (default {DEFAULT_RETRY_FOR:.0f}; 0: never)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="science-gateway",
        description="Submit jobs to a science gateway, wait for them, find their results.",
        epilog="Exit codes: 0 done or success, 1 the job failed or was cancelled, 2 usage error, 3 refused by the gateway, 4 gateway unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("apps", parents=[common], help="the apps the gateway offers, with their parameters")
    submit = commands.add_parser("submit", parents=[common], help="submit a job of APP")
    submit.add_argument("app", metavar="APP")
    submit.add_argument(
        "-p", "--parameter", dest="parameters", action="append", type=parameter, default=[], metavar="NAME=VALUE",
        help="a parameter of the app; VALUE is read as JSON where it is JSON (seed=7, 'shape=[2000,2000]'), else as a string (dtype=float64)",
    )  # fmt: skip
    submit.add_argument("--id", dest="job_id", help="the job's id (default: one the client picks); the same id and parameters again is the same job")
    submit.add_argument("--ttl", type=int, help="seconds the result is kept once the job has finished")
    submit.add_argument("--wait", action="store_true", help="wait until the job has finished; the exit code says how")
    for name, what in [
        ("status", "a job's status and progress"),
        ("wait", "wait until a job has finished; exit 0 when done, 1 when failed or cancelled"),
        ("jobs", "your jobs, newest first"),
        ("cancel", "cancel a queued or running job (a finished one is left as it is)"),
        ("delete", "delete a job: its result and record (cancelled first if it runs)"),
        ("url", "the address of a job's result (its http_url), to open with xarray.open_zarr"),
    ]:
        command = commands.add_parser(name, parents=[common], help=what)
        if name == "jobs":
            command.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"], help="only the jobs of this status")
        else:
            command.add_argument("job_id", metavar="ID")
    return parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _progress_text(record: dict[str, Any]) -> str:
    progress = record.get("progress") or {}
    return f"{progress.get('chunks_written', '?')}/{progress.get('chunks_total', '?')} chunks"


def _record_line(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    said = f"  {error.get('code')}: {error.get('message')}" if error else ""
    return f"{record['job_id']}\t{record['status']}\t{_progress_text(record)}\t{record.get('app', '')}{said}"


def run(arguments: argparse.Namespace) -> int:
    gateway = Gateway(url=arguments.url, retry_for=arguments.retry_for)
    show_progress = sys.stderr.isatty()
    command = arguments.command
    if command == "apps":
        apps = gateway.apps()
        if arguments.json:
            _print_json(apps)
        for app in [] if arguments.json else apps:
            names = ", ".join(app.get("parameters", {}).get("properties", {}))
            print(f"{app['name']} {app['version']}\t{app['description']}\tparameters: {names or 'none'}")
        return EXIT_DONE
    if command == "jobs":
        records = [job.record for job in gateway.jobs(status=arguments.status)]
        if arguments.json:
            _print_json(records)
        for record in [] if arguments.json else records:
            print(_record_line(record))
        return EXIT_DONE
    if command == "submit":
        job = gateway.submit(arguments.app, arguments.job_id, ttl=arguments.ttl, parameters=dict(arguments.parameters))
        if not arguments.wait:
            _print_json(job.record) if arguments.json else print(_record_line(job.record))
            return EXIT_DONE
    else:
        job = gateway.job(arguments.job_id)
    if command in ("submit", "wait"):
        try:
            record = job.wait(progress=show_progress)
        except JobUnsuccessful as exc:
            _print_json(exc.record) if arguments.json else print(_record_line(exc.record))
            print(f"science-gateway: {exc}", file=sys.stderr)
            return EXIT_JOB_UNSUCCESSFUL
        _print_json(record) if arguments.json else print(_record_line(record))
        return EXIT_DONE
    if command == "status":
        _print_json(job.record) if arguments.json else print(_record_line(job.record))
        return EXIT_DONE
    if command == "cancel":
        record = job.cancel()
        _print_json(record) if arguments.json else print(_record_line(record))
        return EXIT_DONE
    if command == "delete":
        job.delete()
        _print_json({"job_id": job.job_id, "deleted": True}) if arguments.json else print(f"{job.job_id}\tdeleted")
        return EXIT_DONE
    if command == "url":
        record = job.record
        if record["status"] in ("failed", "cancelled"):
            print(f"science-gateway: {unsuccessful(record)}", file=sys.stderr)
            return EXIT_JOB_UNSUCCESSFUL
        _print_json({"job_id": job.job_id, "status": record["status"], "http_url": record["http_url"]}) if arguments.json else print(record["http_url"])
        return EXIT_DONE
    raise UsageError(f"unknown command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)  # exits 2 on a usage error, as argparse does
    try:
        return run(arguments)
    except (ConfigurationError, UsageError) as exc:
        parser.print_usage(sys.stderr)
        print(f"science-gateway: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayRefused as exc:
        if arguments.json:
            _print_json({"error": exc.error, "status": exc.status})
        print(f"science-gateway: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except GatewayUnavailable as exc:
        if arguments.json and exc.error:
            _print_json({"error": exc.error, "status": exc.status})
        print(f"science-gateway: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print("science-gateway: interrupted (the job, if any, goes on)", file=sys.stderr)
        return 130
    except (GatewayClientError, requests.RequestException, ValueError) as exc:
        # An answer that is no gateway's (a proxy's HTML page, a cut body), or a wait that ran out: not the job's
        # failure (1), which a script must be able to tell from the gateway not being usable.
        print(f"science-gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
