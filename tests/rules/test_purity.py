"""``rules`` is pure: a full compute with a fitted model never loads httpx or sqlite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A base the real BG/NBD and Gamma-Gamma fit (asserted below), so the model code runs too.
SCRIPT = textwrap.dedent("""
    import json, sys
    from datetime import datetime, time, timedelta
    from zoneinfo import ZoneInfo

    import numpy as np

    from rules.config import RulesConfig
    from rules.engine import compute
    from rules.models import Contact, Deal

    zone = ZoneInfo("Europe/Moscow")
    as_of = datetime(2025, 6, 1, 12, tzinfo=zone)
    rng = np.random.default_rng(3)
    deals = []
    for customer in range(1, 301):
        # The models' own story: a Gamma-distributed rate, a Beta-distributed dropout
        # chance and a Gamma-distributed spend scale per customer.
        rate, dropout = rng.gamma(0.7, 1 / 20.0), rng.beta(1.0, 3.0)
        spend_rate = rng.gamma(4.0, 1 / 3000.0)
        day = float(rng.integers(0, 360))
        while day > 0:
            moment = datetime.combine(as_of.date() - timedelta(days=int(day)), time(12),
                                      zone)
            deals.append(Deal(id=len(deals) + 1, contact_id=customer, company_id=None,
                              title=None, amount=round(rng.gamma(6.0, 1 / spend_rate), 2),
                              currency="RUB", status="won", created_at=moment,
                              closed_at=moment))
            if rng.random() < dropout:
                break
            day -= rng.exponential(1 / rate)
    result = compute([Contact(id=i) for i in range(1, 301)], deals, [], RulesConfig(),
                     as_of)
    used = sorted({s.model_used for s in result.states})
    clv = sum(s.predicted_clv is not None for s in result.states)
    io = [name for name in ("httpx", "sqlite3", "sqlite_utils") if name in sys.modules]
    print(json.dumps({"models": used, "clv": clv, "io": io, "notes": list(result.notes)}))
""")


def test_a_full_compute_with_a_fitted_model_loads_no_io_module() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "bgnbd" in report["models"], report["notes"]
    assert report["clv"] > 0, report["notes"]
    assert report["io"] == []
