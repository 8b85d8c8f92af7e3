"""``retention demo`` and ``retention emulator``: the whole cycle with no CRM account.

The demo generates a seeded portal inside the emulator, syncs it into a fresh
mirror through the real client (pacing, retries, batching and all), changes a few
records in the "CRM", and syncs again incrementally — the same code a real portal
gets, only the transport is in-process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.console import Console

from adapters.bitrix24.emulator import (
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    Portal,
    run_forever,
)
from connector.config import Config, parse_config
from connector.mirror import Mirror
from connector.pipeline import SyncSummary, build_bitrix24_client, run_sync
from connector.report import render_html, render_terminal
from connector.reporting import build_report

__all__ = ["DEMO_TIME_SCALE", "demo_config", "run_demo", "serve_bitrix24_emulator"]

# The demo keeps the real limits and server costs but runs their clock 500x faster,
# so a newcomer sees pacing at work without waiting minutes.
DEMO_TIME_SCALE = 0.002


def demo_config(webhook_url: str, mirror_path: Path) -> Config:
    """A config pointing at the in-process emulator."""
    return parse_config(
        {"crm": {"kind": "bitrix24", "webhook_url": webhook_url},
         "mirror": {"path": str(mirror_path)}},
        {},
    )


def run_demo(
    *, contacts: int, deals: int, seed: int, mirror_path: Path, console: Console,
    html_path: Path | None = None,
) -> SyncSummary:
    """Generate a portal, sync it, change it, sync again, run the rules; print the report."""
    console.print(f"[bold]Emulated Bitrix24 portal[/]: {contacts:,} contacts, {deals:,} deals "
                  f"(seed {seed}, limits on, clock x{1 / DEMO_TIME_SCALE:.0f})")
    portal = Portal.generate(DataConfig(seed=seed, contacts=contacts, deals=deals))
    emulator = BitrixEmulator(portal, limits=EmulatorLimits(time_scale=DEMO_TIME_SCALE))
    config = demo_config(emulator.webhook_url("https://demo.bitrix24.example"), mirror_path)
    _fresh(mirror_path)
    mirror = Mirror.open(mirror_path)
    http = httpx.Client(transport=emulator.transport())
    client = build_bitrix24_client(config, http=http, time_scale=DEMO_TIME_SCALE)
    first = run_sync(config, mirror, client)
    _print(console, "1. full sync", first)
    _change_portal(portal)
    second = run_sync(config, mirror, client)
    _print(console, "2. incremental sync after 3 edits, 1 new deal, 2 deletions", second)
    console.print("[bold]3. rules[/]: segments, loyalty ledger, churn risk, metrics")
    data = build_report(mirror, config.rules)
    render_terminal(data, console)
    if html_path is not None:
        html_path.write_text(render_html(data), encoding="utf-8")
        console.print(f"HTML report with charts: [bold]{html_path}[/] (opens offline)")
    console.print(f"Mirror written to [bold]{mirror_path}[/] "
                  "(try: sqlite3 demo.db 'select lifecycle, count(*) from customer_state "
                  "group by 1')")
    return second


def _change_portal(portal: Portal) -> None:
    deal_ids = sorted(portal.records("deal"))
    contact_ids = sorted(portal.records("contact"))
    for deal_id in deal_ids[:3]:
        portal.update("deal", deal_id, {"TITLE": "Edited in the CRM"})
    portal.add("deal", {"TITLE": "New order", "CONTACT_ID": str(contact_ids[0]),
                        "OPPORTUNITY": "4200.00", "CURRENCY_ID": "RUB", "STAGE_ID": "NEW",
                        "STAGE_SEMANTIC_ID": "P", "CATEGORY_ID": "0"})
    portal.delete("deal", deal_ids[-1])
    portal.delete("contact", contact_ids[-1])


def _print(console: Console, title: str, summary: SyncSummary) -> None:
    totals = summary.totals()
    console.print(
        f"[bold]{title}[/]: fetched {totals['fetched']:,}, upserted {totals['upserted']:,}, "
        f"deleted {totals['deleted']}, rejected {totals['rejected']}, "
        f"requests {totals['requests']}, limit hits {totals['limit_hits']}"
    )
    for report in summary.reports:
        if report.error:
            console.print(f"  [red]{report.entity} failed[/]: {report.error}")


def _fresh(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def serve_bitrix24_emulator(
    *, host: str, port: int, contacts: int, deals: int, seed: int, time_scale: float,
    limits: bool,
) -> None:
    """Serve a generated portal over loopback until interrupted."""
    portal = Portal.generate(DataConfig(seed=seed, contacts=contacts, deals=deals))
    emulator = BitrixEmulator(
        portal, limits=EmulatorLimits(time_scale=time_scale, enabled=limits)
    )
    run_forever(emulator, host, port)
