"""The ``retention`` command line: a thin skin over :mod:`connector.pipeline`.

Every :class:`~connector.errors.ConnectorError` becomes one line on stderr and a
non-zero exit — no traceback. click gives us parsing, help and exit codes; rich
gives the progress bar (rows/s and ETA) and the tables, so neither is hand-written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from connector.config import Config, load_config, resolve_config_path
from connector.errors import ConnectorError
from connector.logs import configure_logging
from connector.mirror import Mirror
from connector.pipeline import SyncSummary, build_bitrix24_client, run_sync

__all__ = ["cli", "main"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
err_console = Console(stderr=True)


class RetentionGroup(click.Group):
    """A click group that turns ConnectorError into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; known errors print one line, never a traceback."""
        try:
            return super().invoke(ctx)
        except ConnectorError as exc:
            message = str(exc).strip()
            click.echo(f"Error: {message}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=RetentionGroup)
@click.option("--config", "config_path", metavar="PATH", default=None,
              help="Config file (default: $RETENTION_CONFIG or retention.toml).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              default="WARNING", show_default=True, help="Logging verbosity (stderr).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """Keep your Bitrix24 customers: pull into a local mirror, score, report.

    Example: retention --config retention.toml sync
    """
    ctx.obj = {"config_path": resolve_config_path(config_path), "log_level": log_level}
    configure_logging(log_level)


def _load(ctx: click.Context) -> Config:
    config = load_config(ctx.obj["config_path"])
    secret = config.crm.webhook_url.get_secret_value() if config.crm.webhook_url else ""
    configure_logging(ctx.obj["log_level"], secrets=[secret])
    return config


@cli.command()
@click.option("--entity", "entities", multiple=True,
              type=click.Choice(["contacts", "deals", "companies"]),
              help="Sync only this entity (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def sync(ctx: click.Context, entities: tuple[str, ...], as_json: bool) -> None:
    """Pull contacts, companies and deals into the local mirror (incremental).

    Example: retention sync --entity deals
    """
    config = _load(ctx)
    mirror = Mirror.open(config.mirror.path)
    with build_bitrix24_client(config) as client, _progress(disable=as_json) as hook:
        summary = run_sync(config, mirror, client, entities=entities or None, progress=hook)
    mirror.close()
    _print_summary(summary, as_json)
    if not summary.ok:
        ctx.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show mirror counts, the last sync of each entity and recent rejects.

    Example: retention status
    """
    config = _load(ctx)
    if not Path(config.mirror.path).exists():
        raise click.ClickException(f"no mirror at {config.mirror.path}: run `retention sync`")
    mirror = Mirror.open(config.mirror.path)
    data = {"counts": mirror.counts(), "last_runs": mirror.last_runs(),
            "rejects": [{k: v for k, v in r.items() if k != "raw"} for r in mirror.rejects()]}
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
        return
    _print_status(data)


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config, reach the CRM, and explain missing scopes or permissions.

    Example: retention check
    """
    from connector.checks import run_checks

    config = _load(ctx)
    ok = True
    with build_bitrix24_client(config) as client:
        for result in run_checks(config, client):
            mark = "[green]ok[/]" if result.ok else "[red]FAIL[/]"
            err_console.print(f"{mark}  {result.name}: {result.detail}")
            ok = ok and result.ok
    if not ok:
        ctx.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report data as JSON.")
@click.option("--html", "html_path", metavar="FILE", default=None,
              help="Also write a self-contained HTML page with charts.")
@click.option("--as-of", "as_of", metavar="YYYY-MM-DD", default=None,
              help="Compute as at the end of this day (default: now); shown, not stored.")
@click.option("--top", default=20, show_default=True, help="At-risk customers to list.")
@click.pass_context
def report(ctx: click.Context, as_json: bool, html_path: str | None, as_of: str | None,
           top: int) -> None:
    """Recompute segments, loyalty, churn risk and metrics from the mirror; show them.

    Example: retention report --html report.html
    """
    from connector.reporting import build_report

    config = _load(ctx)
    if not Path(config.mirror.path).exists():
        raise click.ClickException(f"no mirror at {config.mirror.path}: run `retention sync`")
    mirror = Mirror.open(config.mirror.path)
    data = build_report(mirror, config.rules, as_of=as_of, top=top)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        from connector.report import render_terminal

        render_terminal(data, Console())
    if html_path:
        from connector.report import render_html

        Path(html_path).write_text(render_html(data), encoding="utf-8")
        click.echo(f"HTML report written to {html_path}", err=True)


@cli.group()
def emulator() -> None:
    """Run a local CRM emulator (for demos, benchmarks and other clients)."""


@emulator.command("bitrix24")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--contacts", default=2_000, show_default=True, type=int)
@click.option("--deals", default=10_000, show_default=True, type=int)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--time-scale", default=1.0, show_default=True, type=float,
              help="Multiply every server duration (0.01 runs a 10-minute window in 6 s).")
@click.option("--no-limits", is_flag=True, help="Disable the rate and time limits.")
def emulator_bitrix24(host: str, port: int, contacts: int, deals: int, seed: int,
                      time_scale: float, no_limits: bool) -> None:
    """Serve an emulated Bitrix24 portal over loopback until Ctrl+C.

    Example: retention emulator bitrix24 --port 8000 --contacts 20000 --deals 100000
    """
    from connector.demo import serve_bitrix24_emulator

    serve_bitrix24_emulator(host=host, port=port, contacts=contacts, deals=deals, seed=seed,
                            time_scale=time_scale, limits=not no_limits)


@cli.command()
@click.option("--contacts", default=1_500, show_default=True, type=int)
@click.option("--deals", default=6_000, show_default=True, type=int)
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--mirror", "mirror_path", default="demo.db", show_default=True,
              help="Where to write the demo mirror (recreated each run).")
@click.option("--html", "html_path", default="demo-report.html", show_default=True,
              help="Where to write the demo's HTML report.")
def demo(contacts: int, deals: int, seed: int, mirror_path: str, html_path: str) -> None:
    """Run the whole cycle against an in-process emulator: no CRM account needed.

    Example: retention demo --deals 20000
    """
    from connector.demo import run_demo

    run_demo(contacts=contacts, deals=deals, seed=seed, mirror_path=Path(mirror_path),
             console=Console(), html_path=Path(html_path))


# -- output helpers ------------------------------------------------------------------------


@contextmanager
def _progress(disable: bool = False) -> Iterator[Any]:
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err_console, disable=disable or not err_console.is_terminal, transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def hook(entity: str, rows: int, expected: int | None) -> None:
        if entity not in tasks:
            tasks[entity] = progress.add_task(entity, total=expected, rate="")
        task = tasks[entity]
        progress.advance(task, rows)
        speed = progress.tasks[task].speed
        progress.update(task, rate=f"{speed:,.0f} rows/s" if speed else "")

    with progress:
        yield hook


def _print_summary(summary: SyncSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict(), ensure_ascii=False, indent=2))
        return
    table = Table(title="Sync summary")
    columns = ("entity", "status", "fetched", "upserted", "deleted", "rejected", "requests",
               "limit_hits")
    for column in columns:
        table.add_column(column, justify="left" if column in ("entity", "status") else "right")
    for entry in summary.as_dict()["entities"]:
        table.add_row(*(str(entry[c]) for c in columns))
    Console().print(table)
    for report in summary.reports:
        if report.error:
            click.echo(f"Error: {report.entity}: {report.error}", err=True)


def _print_status(data: dict[str, Any]) -> None:
    console = Console()
    counts = Table(title="Mirror")
    for column in ("entity", "live", "deleted", "rejects"):
        counts.add_column(column)
    for entity, c in data["counts"].items():
        counts.add_row(entity, str(c["live"]), str(c["deleted"]), str(c["rejects"]))
    console.print(counts)
    runs = Table(title="Last sync")
    for column in ("entity", "finished_at", "status", "fetched", "deleted", "rejected", "error"):
        runs.add_column(column)
    for run in data["last_runs"]:
        runs.add_row(*(str(run.get(c) or "") for c in ("entity", "finished_at", "status",
                                                       "fetched", "deleted", "rejected", "error")))
    console.print(runs)
    for reject in data["rejects"]:
        console.print(f"reject {reject['entity']} {reject['id']} ({reject['action']}): "
                      f"{reject['reason']}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="retention")


if __name__ == "__main__":  # pragma: no cover
    main()
