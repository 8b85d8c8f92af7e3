"""Benchmark: the full rules recompute from a mirror, and BG/NBD fit times.

Usage::

    .venv/bin/python bench/rules.py                       # 1,000,000 customers, 5,000,000 deals
    .venv/bin/python bench/rules.py --customers 100000 --deals 500000
    .venv/bin/python bench/rules.py --skip-fit            # recompute only
    .venv/bin/python bench/rules.py --skip-fit --phases   # ... with phase timings
    /tmp/benchvenv/bin/python bench/rules.py --fit-only   # fit comparison with lifetimes

The synthetic mirror is cached under ``bench/out/`` (gitignored) per size and seed.  Each
recompute runs in a fresh child process, so its memory is the recompute's alone — reading
the mirror, computing and storing — not the generator's.  The recompute forks helpers of
its own (``connector/parallel.py``); peak memory is the sampled peak of the PSS summed over
that process and its children, so pages they share copy-on-write are counted once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Run as a script, this file's folder would be sys.path[0] and "import rules" would find
# this very file instead of the rules package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from rules.config import BonusRule, LoyaltyConfig, RulesConfig  # noqa: E402

FloatArray = npt.NDArray[np.float64]
AS_OF = datetime(2025, 6, 15, 12, tzinfo=UTC)
HISTORY_DAYS = 3 * 365  # how far back the synthetic shop's history goes
OFFSET = "+03:00"  # the portal's UTC offset, as Bitrix24 writes timestamps
_CHUNK = 200_000  # rows generated and inserted per batch: bounded generator memory


def bench_config() -> RulesConfig:
    """Defaults plus what a real shop turns on: review bonus, redemptions, 1-year expiry."""
    review = BonusRule(field="UF_CRM_REVIEW", entity="deal", equals="Y", points=200,
                       reason="review left")
    return RulesConfig(loyalty=LoyaltyConfig(bonuses=(review,), expiry_days=365))


def _iso(seconds: npt.NDArray[np.int64]) -> list[str]:
    """Local ISO timestamps with the portal offset for UTC epoch ``seconds``."""
    local = (seconds + 3 * 3600).astype("datetime64[s]")
    return [text + OFFSET for text in np.datetime_as_string(local, unit="s").tolist()]


def _contact_rows(ids: npt.NDArray[np.int64], rng: np.random.Generator,
                  created: npt.NDArray[np.int64]) -> list[tuple[Any, ...]]:
    n = len(ids)
    phone_roll, email_roll, birth_roll = rng.random(n), rng.random(n), rng.random(n)
    digits = rng.integers(0, 10**9, n)
    birthdays = (np.datetime64("1960-01-01") + rng.integers(0, 45 * 365, n)).astype(str)
    created_text = _iso(created)
    rows = []
    for k, cid in enumerate(ids.tolist()):
        phone = (f"+7 9{digits[k] // 10**7:02d} {digits[k] % 10**7:07d}"
                 if phone_roll[k] < 0.75 else "12-34" if phone_roll[k] < 0.78 else None)
        email = (f"client{cid}@mail.ru" if email_roll[k] < 0.55
                 else f"client{cid}@" if email_roll[k] < 0.57 else None)
        birthday = str(birthdays[k]) if birth_roll[k] < 0.6 else None
        raw = {"ID": str(cid), "NAME": f"Client {cid}", "BIRTHDATE": birthday or "",
               "PHONE": [{"VALUE": phone, "VALUE_TYPE": "WORK"}] if phone else [],
               "EMAIL": [{"VALUE": email, "VALUE_TYPE": "HOME"}] if email else [],
               "ASSIGNED_BY_ID": "1", "DATE_CREATE": created_text[k],
               "DATE_MODIFY": created_text[k]}
        rows.append((cid, f"Client {cid}", json.dumps([phone] if phone else []),
                     json.dumps([email] if email else []), birthday, 1, created_text[k],
                     created_text[k], None, json.dumps(raw, ensure_ascii=False), None))
    return rows


@dataclass
class _Shop:
    """Per-customer behaviour: when they start, when they drop out, how often they buy."""

    start: npt.NDArray[np.float64]  # seconds before AS_OF
    end: npt.NDArray[np.float64]
    spend: npt.NDArray[np.float64]  # typical check (log-normal across customers)

    @classmethod
    def draw(cls, n: int, rng: np.random.Generator) -> _Shop:
        horizon = HISTORY_DAYS * 86400.0
        start = rng.uniform(0, horizon, n)
        # dropout: an exponential active life (mean ~16 months), cut at AS_OF
        end = np.maximum(start - rng.exponential(500 * 86400.0, n), 0.0)
        spend = rng.lognormal(7.6, 0.6, n)
        return cls(start, end, spend)

    def weights(self, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        """Chance of each customer owning a given deal: rate × active span."""
        n = len(self.start)
        rate = rng.gamma(0.6, 1.0, n)  # heterogeneous purchase rates (NBD-style)
        rate[rng.random(n) < 0.2] = 0.0  # prospects: contacts who never bought
        w: FloatArray = rate * (self.start - self.end + 3600.0)
        return w / float(w.sum())


def _deal_rows(first_id: int, owner: npt.NDArray[np.int64], moment: npt.NDArray[np.int64],
               amount: npt.NDArray[np.float64], rng: np.random.Generator
               ) -> list[tuple[Any, ...]]:
    n = len(owner)
    status_roll, uf_roll = rng.random(n), rng.random(n)
    created = moment - rng.integers(0, 7 * 86400, n)
    closed_text, created_text = _iso(moment), _iso(created)
    nps = rng.integers(0, 11, n)
    spent = rng.integers(5, 50, n) * 10
    rows = []
    for k in range(n):
        did, cid = first_id + k, int(owner[k])
        status = "won" if status_roll[k] < 0.82 else "lost" if status_roll[k] < 0.94 else "open"
        closed = None if status == "open" else closed_text[k]
        company = (cid // 10) % 50_000 + 1 if cid % 10 == 0 else None
        u = uf_roll[k]
        # The sync selects the custom fields the rules read for every deal, so each raw
        # record carries all three keys, empty when the manager left them blank.
        custom = {"UF_CRM_REVIEW": "Y" if u < 0.04 else "",
                  "UF_CRM_NPS": str(nps[k]) if 0.04 <= u < 0.10 else "",
                  "UF_CRM_POINTS_SPENT": str(spent[k]) if 0.10 <= u < 0.115
                  and status == "won" else ""}
        uf = "".join(f', "{key}": "{value}"' for key, value in custom.items())
        filled = {key: value for key, value in custom.items() if value}  # = custom_fields_of
        semantic = {"won": "S", "lost": "F", "open": "P"}[status]
        raw = (f'{{"ID": "{did}", "TITLE": "Заказ {did}", "CONTACT_ID": "{cid}", '
               f'"COMPANY_ID": "{company or 0}", "OPPORTUNITY": "{amount[k]:.2f}", '
               f'"CURRENCY_ID": "RUB", "STAGE_ID": "{status.upper()}", '
               f'"STAGE_SEMANTIC_ID": "{semantic}", "CATEGORY_ID": "0", '
               f'"CLOSED": "{"N" if closed is None else "Y"}", "CLOSEDATE": "{closed or ""}", '
               f'"ASSIGNED_BY_ID": "1", "DATE_CREATE": "{created_text[k]}", '
               f'"DATE_MODIFY": "{closed_text[k]}"{uf}}}')
        deleted = closed_text[k] if status_roll[k] > 0.995 else None
        rows.append((did, cid, company, f"Заказ {did}", round(float(amount[k]), 2), "RUB",
                     status, status.upper(), "0", 1, created_text[k], closed,
                     closed_text[k], deleted, raw, json.dumps(filled) if filled else None))
    return rows


def _insert(db: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    marks = ",".join("?" * len(rows[0]))
    db.conn.executemany(f"insert into {table} values ({marks})", rows)


def generate(path: Path, customers: int, deals: int, seed: int) -> None:
    """Write a synthetic mirror straight into SQLite (mirror schema, executemany)."""
    from connector.mirror import Mirror

    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    mirror = Mirror.open(tmp)
    db = mirror.db
    db.execute("pragma journal_mode = off")  # a throwaway file: no crash safety needed
    db.execute("pragma synchronous = off")
    now = int(AS_OF.timestamp())
    shop = _Shop.draw(customers, rng)
    ids = np.arange(1, customers + 1, dtype=np.int64)
    contact_created = now - shop.start.astype(np.int64) - rng.integers(0, 30 * 86400, customers)
    with db.atomic():
        for lo in range(0, customers, _CHUNK):
            _insert(db, "contacts", _contact_rows(ids[lo:lo + _CHUNK], rng,
                                                   contact_created[lo:lo + _CHUNK]))
        company_ids = np.arange(1, min(50_000, max(customers // 20, 1)) + 1, dtype=np.int64)
        db.conn.executemany(
            "insert into companies (id, title, responsible_id, created_at, updated_at, raw) "
            "values (?, ?, 1, '2022-01-01T00:00:00+03:00', '2022-01-01T00:00:00+03:00', ?)",
            ((int(c), f"Company {c}", json.dumps({"ID": str(c)})) for c in company_ids))
    owner = rng.choice(customers, size=deals, p=shop.weights(rng))
    ago = shop.end[owner] + rng.random(deals) * (shop.start[owner] - shop.end[owner])
    moment = now - ago.astype(np.int64)
    order = np.argsort(moment, kind="stable")  # CRM ids grow with time
    owner, moment = owner[order] + 1, moment[order]
    amount = np.round(shop.spend[owner - 1] * rng.lognormal(0.0, 0.5, deals), 2)
    del order, ago
    with db.atomic():
        for lo in range(0, deals, _CHUNK):
            hi = min(lo + _CHUNK, deals)
            _insert(db, "deals", _deal_rows(lo + 1, owner[lo:hi], moment[lo:hi],
                                            amount[lo:hi], rng))
    mirror.close()
    tmp.rename(path)

OUT = Path(__file__).resolve().parent / "out"
CDNOW = Path(__file__).resolve().parent.parent / "tests" / "data" / "cdnow_customers_summary.csv"


# -- BG/NBD fit: rules.bgnbd vs lifetimes --------------------------------------------------


def cdnow_summary(path: Path) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(frequency, recency, T) in weeks from lifetimes' CDNOW summary CSV."""
    import csv

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return tuple(np.array([float(r[k]) for r in rows]) for k in ("frequency", "recency", "T"))  # type: ignore[return-value]


def simulate_bgnbd(n: int, seed: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(frequency, recency, T) in weeks drawn from BG/NBD with CDNOW-like parameters."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.243, 1 / 4.414, n)  # r, alpha
    drop = rng.beta(0.793, 2.426, n)  # a, b
    age = rng.uniform(27.0, 39.0, n)  # weeks since the first purchase, as in CDNOW
    frequency, recency, now = np.zeros(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=np.bool_)
    while alive.any():
        now[alive] += rng.exponential(1.0, int(alive.sum())) / rate[alive]
        alive &= now < age
        frequency[alive] += 1
        recency[alive] = now[alive]
        alive &= rng.random(n) >= drop  # after each repeat purchase the customer may leave
    return frequency, recency, age


def _params(model: Any) -> str:
    """r, alpha, a, b of either library's fitted model."""
    values = model.params_ if hasattr(model, "params_") else vars(model)
    return " ".join(f"{k}={float(values[k]):.4g}" for k in ("r", "alpha", "a", "b"))


def _time_fit(fit: Any, data: tuple[FloatArray, FloatArray, FloatArray]) -> tuple[float, str]:
    best, params = float("inf"), ""
    for _ in range(3):  # best of three: the first call also pays imports and warm-up
        started = time.perf_counter()
        model = fit(*data)
        best = min(best, time.perf_counter() - started)
        params = _params(model)
    return best, params


def _fitters() -> dict[str, Any]:
    fitters: dict[str, Any] = {}
    try:
        fitters["rules.bgnbd.fit"] = importlib.import_module("rules.bgnbd").fit
    except ImportError:
        print("note: rules.bgnbd is not there yet; skipped")
    try:
        fitter = importlib.import_module("lifetimes").BetaGeoFitter
        fitters["lifetimes.BetaGeoFitter"] = lambda f, r, t: fitter().fit(f, r, t)
    except ImportError:
        print("note: lifetimes is not importable here; install the bench extra into a "
              "throwaway venv (pip install -e '.[bench]') to compare")
    return fitters


def bench_fit(cdnow: Path, seed: int) -> None:
    """Print BG/NBD fit times at CDNOW size and on 100k synthetic customers."""
    datasets = {"synthetic 100k": simulate_bgnbd(100_000, seed)}
    if cdnow.exists():
        datasets = {"CDNOW 2,357": cdnow_summary(cdnow), **datasets}
    else:
        print(f"note: {cdnow} missing; CDNOW size skipped")
    for name, fit in _fitters().items():
        for label, data in datasets.items():
            seconds, params = _time_fit(fit, data)
            print(f"fit {name} on {label} ({len(data[0]):,} customers): {seconds:.3f} s; "
                  f"params {params}")


def mirror_path(customers: int, deals: int, seed: int) -> Path:
    """Where the generated mirror of this size and seed is cached."""
    # v3: custom_fields beside raw (mirror migration m003)
    return OUT / f"rules_v3_{customers}_{deals}_s{seed}.db"


def peak_rss_mb() -> float:
    """``ru_maxrss`` of this process in MiB (Linux reports KiB).

    Linux carries ru_maxrss over an exec, so a child started by a big parent reports at
    least the parent's peak; ``hwm_mb`` does not have that flaw.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float | None:
    """VmHWM — the peak RSS of this process image — in MiB, where /proc has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class TreeMemory:
    """Peak proportional memory (PSS) of this process plus its children, sampled.

    The recompute forks children that share the parent's pages copy-on-write: summing
    every process's RSS would count those pages twice, PSS splits each shared page
    between its sharers, so the sum is what the machine really spends.
    """

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.peak_mb = every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        pids = [os.getpid(), *_children(os.getpid())]
        self.peak_mb = max(self.peak_mb, sum(_pss_kb(pid) for pid in pids) / 1024)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
    return found


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the child ended between listing and reading
        pass
    return 0


def recompute(path: Path, fresh: bool, days_later: int = 0) -> dict[str, Any]:
    """One full recompute (``run_rules`` with store) of the mirror at ``path``."""
    from connector.mirror import Mirror
    from connector.rules_io import run_rules

    mirror = Mirror.open(path)
    if fresh:  # the first-ever run: no previous ledger to reconcile against
        with mirror.db.atomic():
            for name in ("customer_state", "points_ledger", "metric_snapshots"):
                mirror.db.execute(f"delete from {name}")
    rss_before = peak_rss_mb()
    with TreeMemory() as memory:
        started = time.perf_counter()
        result = run_rules(mirror, bench_config(), as_of=AS_OF + timedelta(days=days_later))
        seconds = time.perf_counter() - started
    ledger = mirror.db.execute("select count(*) from points_ledger").fetchone()[0]
    mirror.close()
    hwm = hwm_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb()),
            "vm_hwm_mb": round(hwm) if hwm is not None else None,
            "tree_pss_mb": round(memory.peak_mb), "child_rss_mb": round(children),
            "rss_before_mb": round(rss_before), "states": len(result.states),
            "ledger_rows": ledger, "crr_percent": result.metrics.crr_percent,
            "notes": list(result.notes)}


def host_reference() -> float:
    """Seconds for a fixed piece of recompute-like work, best of three: a speed gauge.

    This VM's speed drifts by up to half within an hour (memory and the neighbours, not
    the code), so each recompute figure is printed beside this one, measured just before
    it: the same numpy sort, Python tuples and SQLite inserts on the same data each time.
    """
    import sqlite3

    values = np.random.default_rng(0).integers(0, 2**40, 2_000_000)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        np.sort(values)
        rows = [(v, str(v), v * 0.5) for v in values[:300_000].tolist()]
        conn = sqlite3.connect(":memory:")
        conn.execute("create table t (a integer primary key, b text, c real) without rowid")
        conn.executemany("insert or replace into t values (?, ?, ?)", rows)
        conn.close()
        best = min(best, time.perf_counter() - started)
    return best


def run_child(args: list[str]) -> dict[str, Any]:
    """Run this script in a child process and return the JSON it prints last."""
    # stderr passes through, so a failing child shows its traceback
    out = subprocess.run([sys.executable, __file__, *args], check=True,
                         stdout=subprocess.PIPE, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def machine() -> str:
    """nproc, RAM and Python version: what the figures depend on."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (f"{os.cpu_count()} CPUs, {pages / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.machine()}")


@contextmanager
def cache_locked(path: Path, wanted: bool) -> Iterator[str]:
    """Keep the mirror's pages in RAM with vmtouch (if asked and installed); say how.

    Some machines (this project's VMs among them) page file data out after a minute of
    idleness, so a multi-GB mirror is half on disk by the time the store needs it and the
    figures measure the disk.  Locking the file's pages measures the recompute itself —
    what a machine that keeps its page cache sees.
    """
    vmtouch = shutil.which("vmtouch")
    if not wanted or vmtouch is None:
        yield "page cache as the machine keeps it" + ("" if wanted else " (--no-lock)")
        return
    pidfile = path.with_suffix(".vmtouch.pid")
    subprocess.run([vmtouch, "-q", "-l", "-d", "-w", "-P", str(pidfile), str(path)],
                   check=True)
    try:
        yield "mirror pages locked in RAM (vmtouch -l)"
    finally:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        pidfile.unlink(missing_ok=True)


def bench_recompute(customers: int, deals: int, seed: int, lock: bool,
                    phases: bool = False) -> None:
    """Generate (or reuse) the mirror, then time a first, a repeated and a next-day run."""
    path = mirror_path(customers, deals, seed)
    if not path.exists():
        started = time.perf_counter()
        generate(path, customers, deals, seed)
        print(f"generated {path.name} ({path.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - started:.0f} s")
    runs = (("first run (empty ledger)", ["--fresh"]),
            ("recompute, same as_of (previous ledger stored)", ["--again"]),
            ("next day (as_of + 1 day, previous ledger stored)", ["--again", "--days-later",
                                                                  "1"]))
    with cache_locked(path, lock) as cache:
        print(f"cache: {cache}")
        for label, flags in runs:
            gauge = host_reference()
            figures = run_child(["--child", str(path), *flags, *(["--phases"] if phases else [])])
            print(f"{label}: {figures['seconds']} s (host gauge {gauge:.2f} s); "
                  f"peak memory {figures['tree_pss_mb']} MiB "
                  f"= {figures['tree_pss_mb'] * 2**20 / 1e9:.2f} GB "
                  f"(PSS of the recompute and its forked children; parent VmHWM "
                  f"{figures['vm_hwm_mb']} MiB, largest child RSS "
                  f"{figures['child_rss_mb']} MiB); {figures['states']:,} states, "
                  f"{figures['ledger_rows']:,} ledger rows")
            print(f"  notes: {figures['notes']}")


def main() -> None:
    """Parse options and run the requested parts of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--deals", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-fit", action="store_true", help="recompute only")
    parser.add_argument("--fit-only", action="store_true", help="BG/NBD fit times only")
    parser.add_argument("--no-lock", action="store_true",
                        help="do not lock the mirror's pages in RAM (see cache_locked)")
    parser.add_argument("--phases", action="store_true",
                        help="log each recompute's phase timings (read, compute, store) "
                             "to stderr")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--days-later", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.phases:
            import logging

            logging.basicConfig(format="  %(relativeCreated)6.0f ms  %(message)s")
            logging.getLogger("crm_retention.rules").setLevel(logging.DEBUG)
        print(json.dumps(recompute(args.child, fresh=args.fresh, days_later=args.days_later)))
        return
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d}")
    if not args.fit_only:
        bench_recompute(args.customers, args.deals, args.seed, lock=not args.no_lock,
                        phases=args.phases)
    if not args.skip_fit:
        bench_fit(CDNOW, seed=args.seed)


if __name__ == "__main__":
    main()
