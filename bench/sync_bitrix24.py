"""Benchmark: pull an emulated Bitrix24 portal at its limits, beside fast_bitrix24 and b24pysdk.

The emulator runs in this process over loopback with the default limits (leaky bucket
50 / 2 per s, 480 s per method per 10 min) and the published server costs, all on a
clock ``--time-scale`` times real time. Each client runs in its own child process
against a fresh emulator (so budgets do not carry over) and reports its own peak RSS
(``VmHWM``: ``ru_maxrss`` would also count the pages a child inherits at fork).

The ceiling a client is measured against is computed from the same model:

* bucket bound   = drain × 2,500 rows per batch request
* budget bound   = (budget / window) ÷ server cost per row
* latency bound  = 2,500 rows ÷ (server cost of a 50-page batch + extra latency)

``binding`` = the smallest of the three (steady state, the issue's definition).
``schedule`` is stricter about short runs: a method may spend its whole budget at once,
then must idle ``window − budget``, so T = C + (window − budget) × ⌈C / budget − 1⌉
for total server cost C, summed over entities (each method has its own budget).

Run:  .venv/bin/python bench/sync_bitrix24.py [--deals 100000 --contacts 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.bitrix24.emulator import (  # noqa: E402
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    Portal,
    serve,
)

ROWS_PER_BATCH = 2_500

PEAK_MB = """
def peak_mb():
    # VmHWM belongs to this process's own address space (ru_maxrss would also count the
    # parent's pages copied at fork time).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
"""

OURS = PEAK_MB + """
import json, sys, time
from connector.config import parse_config
from connector.mirror import Mirror
from connector.pipeline import build_bitrix24_client, run_sync
url, scale, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
config = parse_config({"crm": {"kind": "bitrix24", "webhook_url": url},
                       "mirror": {"path": path}, "sync": {"entities": ["contacts", "deals"]}}, {})
client = build_bitrix24_client(config, time_scale=scale)
t0 = time.perf_counter()
summary = run_sync(config, Mirror.open(path), client)
elapsed = time.perf_counter() - t0
totals = summary.totals()
print(json.dumps({"rows": totals["fetched"], "seconds": elapsed, "ok": summary.ok,
                  "peak_mb": peak_mb(),
                  "error": "; ".join(r.error or "" for r in summary.reports if r.error)}))
"""

FAST_BITRIX24 = PEAK_MB + """
import json, sys, time, inspect
from fast_bitrix24 import Bitrix
url, scale = sys.argv[1], float(sys.argv[2])
kwargs = {"verbose": False}
params = inspect.signature(Bitrix.__init__).parameters
if "requests_per_second" in params: kwargs["requests_per_second"] = 2.0 / scale
if "operating_time_limit" in params: kwargs["operating_time_limit"] = max(1, round(480 * scale))
b = Bitrix(url, **kwargs)
t0, rows, error = time.perf_counter(), 0, ""
try:
    for method, select in (("crm.contact.list", ["ID", "NAME", "LAST_NAME", "BIRTHDATE", "PHONE",
                            "EMAIL", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY"]),
                           ("crm.deal.list", ["ID", "TITLE", "CONTACT_ID", "COMPANY_ID",
                            "OPPORTUNITY", "CURRENCY_ID", "STAGE_SEMANTIC_ID", "CLOSEDATE",
                            "DATE_CREATE", "DATE_MODIFY"])):
        rows += len(b.get_all(method, {"select": select}))
except BaseException as exc:
    error = f"{type(exc).__name__}: {str(exc)[:160]}"
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "ok": not error,
                  "error": error, "peak_mb": peak_mb()}))
"""

B24PYSDK = PEAK_MB + """
import importlib, json, sys, time
from urllib.parse import urlsplit
from b24pysdk import BitrixWebhook, Client
url = urlsplit(sys.argv[1])
cm = importlib.import_module("b24pysdk.api.callers.call_method")
cm._MethodCaller._base_url = property(lambda self: f"http://{self._domain}/rest")
user, secret = url.path.strip("/").split("/")[1:3]
client = Client(BitrixWebhook(domain=url.netloc, webhook_token=f"{user}/{secret}"))
t0, rows, error = time.perf_counter(), 0, ""
try:
    rows += sum(1 for _ in client.crm.contact.list(select=["ID", "NAME", "PHONE", "EMAIL",
                "DATE_MODIFY"]).as_list_fast().result)
    rows += sum(1 for _ in client.crm.deal.list(select=["ID", "TITLE", "CONTACT_ID",
                "OPPORTUNITY", "STAGE_SEMANTIC_ID", "DATE_MODIFY"]).as_list_fast().result)
except BaseException as exc:
    error = f"{type(exc).__name__}: {str(exc)[:160]}"
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "ok": not error,
                  "error": error, "peak_mb": peak_mb()}))
"""


@dataclass
class Result:
    """One client's run."""

    name: str
    rows: int
    seconds: float
    requests: int
    http_503: int
    http_429: int
    batch_429: int
    peak_rss_mb: float
    ok: bool
    error: str


def run_child(name: str, code: str, args: list[str], emulator: BitrixEmulator) -> Result:
    """Run one client in a child process; it reports its own peak RSS (VmHWM)."""
    before = (emulator.stats.requests, emulator.stats.http_503, emulator.stats.http_429,
              emulator.stats.batch_429)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out_f,
                                stderr=err_f, env=env, text=True)
        proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        data = {"rows": 0, "seconds": 0.0, "ok": False, "error": (err or out)[-200:]}
    stats = emulator.stats
    return Result(name, data["rows"], data["seconds"], stats.requests - before[0],
                  stats.http_503 - before[1], stats.http_429 - before[2],
                  stats.batch_429 - before[3], data.get("peak_mb", 0.0), data["ok"],
                  data.get("error", ""))


def ceilings(limits: EmulatorLimits, table_rows: dict[str, int]) -> dict[str, float]:
    """Rows per real second each bound allows, on the emulator's scaled clock."""
    scale = limits.time_scale
    cost_row = limits.page_cost_s / 50
    batch_cost = cost_row * ROWS_PER_BATCH + limits.latency_s
    bucket = limits.drain_per_s * ROWS_PER_BATCH
    budget = (limits.operating_budget_s / limits.operating_window_s) / cost_row
    latency = ROWS_PER_BATCH / batch_cost
    total = sum(table_rows.values())
    schedule_s = 0.0
    for rows in table_rows.values():
        cost = rows * cost_row
        idles = max(math.ceil(cost / limits.operating_budget_s) - 1, 0)
        schedule_s += max(cost, rows / bucket) + idles * (
            limits.operating_window_s - limits.operating_budget_s)
    return {"bucket": bucket / scale, "budget": budget / scale, "latency": latency / scale,
            "binding": min(bucket, budget, latency) / scale,
            "schedule": total / (schedule_s * scale)}


def peers_available() -> list[tuple[str, str]]:
    """The peer clients importable here (bench-only extras)."""
    found = []
    for module, name, code in (("fast_bitrix24", "fast_bitrix24", FAST_BITRIX24),
                               ("b24pysdk", "b24pysdk (as_list_fast)", B24PYSDK)):
        try:
            __import__(module)
        except ImportError:
            print(f"note: {module} not installed (pip install -e '.[bench]'); skipped")
            continue
        found.append((name, code))
    return found


def main() -> None:
    """Generate the portal, run each client against a fresh emulator, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    portal = Portal.generate(DataConfig(seed=1, contacts=args.contacts, deals=args.deals))
    print(f"portal generated in {time.perf_counter() - t0:.1f} s")
    limits = EmulatorLimits(time_scale=args.time_scale)
    table_rows = {"contacts": len(portal.records("contact")),
                  "deals": len(portal.records("deal"))}
    clients = [("crm-retention", OURS)] + ([] if args.no_peers else peers_available())
    results = []
    for name, code in clients:
        emulator = BitrixEmulator(portal, limits=limits)
        with serve(emulator, host="127.0.0.1", port=0) as server, \
                tempfile.TemporaryDirectory() as tmp:
            extra = [str(Path(tmp) / "m.db")] if name == "crm-retention" else []
            print(f"running {name} …", flush=True)
            results.append(run_child(name, code, [server.webhook_url, str(args.time_scale),
                                                  *extra], emulator))
    report = render(results, ceilings(limits, table_rows), args, table_rows)
    print(report)
    if args.record:
        record(report, args)


def render(results: list[Result], ceil: dict[str, float], args: argparse.Namespace,
           table_rows: dict[str, int]) -> str:
    """A Markdown table of the runs and the ceilings."""
    lines = [
        f"Portal: {table_rows['deals']:,} deals + {table_rows['contacts']:,} contacts; "
        f"time scale {args.time_scale} (1 real s = {1 / args.time_scale:.0f} portal s).",
        f"Ceilings (rows per real s): bucket {ceil['bucket']:,.0f}, budget {ceil['budget']:,.0f},"
        f" latency {ceil['latency']:,.0f} → binding {ceil['binding']:,.0f}; "
        f"schedule-aware {ceil['schedule']:,.0f}.",
        "",
        "| client | rows | seconds | rows/s | ÷ binding | ÷ schedule | requests | 503 | 429 "
        "| 429 in batch | peak RSS MB | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    expected = sum(table_rows.values())
    for r in results:
        rate = r.rows / r.seconds if r.seconds else 0.0
        outcome = "ok" if r.ok else f"failed: {r.error[:90]}"
        if r.ok and r.rows != expected:
            outcome = f"INCOMPLETE: {r.rows:,} of {expected:,} rows, no error raised"
        lines.append(
            f"| {r.name} | {r.rows:,} | {r.seconds:.1f} | {rate:,.0f} | "
            f"{rate / ceil['binding']:.2f} | {rate / ceil['schedule']:.2f} | {r.requests} | "
            f"{r.http_503} | {r.http_429} | {r.batch_429} | {r.peak_rss_mb:.0f} | {outcome} |"
        )
    return "\n".join(lines)


def record(report: str, args: argparse.Namespace) -> None:
    """Append the report, with the command and machine, to bench/RESULTS.md."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    command = " ".join(["python bench/sync_bitrix24.py", *sys.argv[1:]])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    entry = (f"\n## sync_bitrix24 — {date.today().isoformat()}\n\nCommand: `{command}`  \n"
             f"Machine: {machine}\n\n{report}\n")
    path.write_text(text + entry)


if __name__ == "__main__":
    main()
