import json
import re
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from connector.cli import cli
from connector.mirror import Mirror, SyncState
from connector.report import render_html, render_terminal, report_data
from connector.reporting import NOT_STORED_NOTE, parse_as_of
from rules.config import RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal, RulesResult

AS_OF = datetime(2025, 6, 30, 12, tzinfo=UTC)
# Each chart of the HTML page, by the aria-label that only it carries.
CHARTS = ("Cohort retention heatmap", "Lifecycle segment sizes", "Loyalty tier distribution",
          "Churn risk histogram", "Predicted CLV distribution")


def deal(i, contact, day, amount=1000.0, status="won"):
    moment = datetime.combine(day, datetime.min.time(), UTC)
    return Deal(id=i, contact_id=contact, company_id=None, title=f"d{i}", amount=amount,
                currency="RUB", status=status, created_at=moment, closed_at=moment,
                updated_at=moment, deleted_at=None, category_id="0", fields={})


def contact(i, name):
    return Contact(id=i, name=name, phones=("+79120000000",), emails=(), birthday=None,
                   responsible_id=7, created_at=AS_OF, deleted_at=None, fields={})


def sample():
    contacts = [contact(1, "<script>alert(1)</script>"), contact(2, "Анна"), contact(3, "Пётр")]
    deals = [deal(1, 1, date(2025, 1, 5)), deal(2, 1, date(2025, 2, 5)),
             deal(3, 1, date(2025, 3, 5)), deal(4, 2, date(2025, 6, 20), 5000.0),
             deal(5, 3, date(2024, 1, 10))]
    return compute(contacts, deals, [], RulesConfig(), AS_OF)


def fitted() -> RulesResult:
    """A base of 300 customers drawn the way BG/NBD and Gamma-Gamma assume: both fit."""
    rng = np.random.default_rng(3)
    contacts, deals = [], []
    for customer in range(1, 301):
        contacts.append(contact(customer, f"C{customer}"))
        rate, dropout = rng.gamma(0.7, 1 / 20.0), rng.beta(1.0, 3.0)
        spend_rate = rng.gamma(4.0, 1 / 3000.0)
        day = float(rng.integers(0, 360))
        while day > 0:
            deals.append(deal(len(deals) + 1, customer, AS_OF.date() - timedelta(days=int(day)),
                              round(float(rng.gamma(6.0, 1 / spend_rate)), 2)))
            if rng.random() < dropout:
                break
            day -= rng.exponential(1 / rate)
    result = compute(contacts, deals, [], RulesConfig(), AS_OF)
    assert result.metrics.predicted_clv is not None, result.notes
    return result


def test_report_data_adds_up():
    data = report_data(sample(), as_of=AS_OF, names={1: "<script>alert(1)</script>"})
    assert data["customers"] == 3 and data["buyers"] == 3
    assert sum(data["lifecycle"].values()) == 3
    assert sum(data["value"].values()) == 3
    assert sum(data["tiers"].values()) == 3
    assert sum(data["churn_histogram"]["counts"]) == 3
    assert [r["customer_id"] for r in data["at_risk"]] != []
    assert all(r["lifecycle"] != "lost" for r in data["at_risk"])
    assert json.loads(json.dumps(data)) == data, "plain JSON, no NaN/Infinity"


def test_html_draws_each_of_the_five_charts():
    page = render_html(report_data(fitted(), as_of=AS_OF))
    for label in CHARTS:
        assert re.search(rf'<svg[^>]*aria-label="{label}"', page), label
    assert "no data" not in page


def test_a_chart_without_data_is_missing_from_the_page():
    # No model on three customers: no CLV values, so no CLV chart (and the marker says so).
    page = render_html(report_data(sample(), as_of=AS_OF))
    assert 'aria-label="Predicted CLV distribution"' not in page
    assert 'aria-label="Churn risk histogram"' in page


def test_terminal_shows_rfm_groups_and_both_histograms():
    console = Console(record=True, width=120)
    render_terminal(report_data(fitted(), as_of=AS_OF), console)
    text = console.export_text()
    for title in ("RFM groups (buyers)", "Churn risk (buyers)", "Predicted CLV (buyers)",
                  "Lifecycle", "Loyalty tiers", "Monthly cohorts"):
        assert title in text, title
    assert "0.0 – 0.1" in text and "█" in text


def test_histogram_bins_are_half_open_and_the_ends_take_the_rest():
    from connector.report import _histogram

    edges = [i / 10 for i in range(11)]
    got = _histogram([0.0, 0.1, 0.0999, 0.95, 1.0, -1.0, 5.0], edges)
    assert got["counts"] == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3]


def test_html_is_self_contained_and_escapes_user_data():
    data = report_data(sample(), as_of=AS_OF, names={1: "<script>alert(1)</script>"})
    data["at_risk"] = [{**data["at_risk"][0], "name": "<script>alert(1)</script>"}]
    page = render_html(data)
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r'(src|href)\s*=\s*["\']?https?:', page), "nothing loads from outside"


def shop(tmp_path):
    """A mirror with contacts 1, 2 and five 1,500 ₽ purchases (Jan–May 2025); its config."""
    mirror = Mirror.open(tmp_path / "m.db")
    rows = [{"id": i, "name": f"C{i}", "phones": [], "emails": [], "birthday": None,
             "responsible_id": 3, "created_at": "2024-01-01T00:00:00+03:00",
             "updated_at": "2024-01-01T00:00:00+03:00", "deleted_at": None, "raw": {}}
            for i in (1, 2)]
    mirror.write_page("contacts", rows, [], SyncState("contacts"), seen_at="t")
    deals = [{"id": i, "contact_id": 1 + i % 2, "company_id": None, "title": "x",
              "amount": 1500.0, "currency": "RUB", "status": "won", "stage_id": "WON",
              "category_id": "0", "responsible_id": 3,
              "created_at": f"2025-0{i}-01T10:00:00+03:00",
              "closed_at": f"2025-0{i}-02T00:00:00+03:00",
              "updated_at": f"2025-0{i}-02T00:00:00+03:00", "deleted_at": None, "raw": {}}
             for i in range(1, 6)]
    mirror.write_page("deals", deals, [], SyncState("deals"), seen_at="t")
    mirror.close()
    config = tmp_path / "r.toml"
    config.write_text('[crm]\nkind = "bitrix24"\n'
                      'webhook_url = "https://portal.example/rest/1/secret/"\n'
                      f'[mirror]\npath = "{tmp_path / "m.db"}"\n')
    return config


def report(config, *args):
    result = CliRunner().invoke(cli, ["--config", str(config), "report", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[: result.output.rindex("}") + 1])


def stored_tables(path):
    db = Mirror.open(path).db
    return {table: db.execute(f"select * from {table} order by 1, 2").fetchall()
            for table in ("customer_state", "points_ledger", "metric_snapshots")}


def test_cli_report_json_and_html(tmp_path):
    config = shop(tmp_path)
    html = tmp_path / "out.html"
    data = report(config, "--as-of", "2025-06-30", "--html", str(html))
    # The period is May 2025, the last full month: only deal 5 (closed 2025-05-02).
    assert (data["period"]["start"], data["period"]["end"]) == ("2025-05-01", "2025-06-01")
    assert data["buyers"] == 2
    assert (data["metrics"]["period_purchases"], data["metrics"]["period_revenue"]) == (
        1, 1500.0)
    assert data["metrics"]["points_liability"] == 5 * 45  # 5 × 1,500 ₽ × 3 %
    page = html.read_text()
    for label in ("Cohort retention heatmap", "Lifecycle segment sizes",
                  "Loyalty tier distribution", "Churn risk histogram"):
        assert re.search(rf'<svg[^>]*aria-label="{label}"', page), label


def test_a_regular_report_stores_its_result(tmp_path):
    config = shop(tmp_path)
    data = report(config)
    assert data["stored"] is True and NOT_STORED_NOTE not in data["notes"]
    tables = stored_tables(tmp_path / "m.db")
    assert (len(tables["customer_state"]), len(tables["points_ledger"]),
            len(tables["metric_snapshots"])) == (2, 5, 1)


def test_a_back_dated_report_is_computed_but_never_stored(tmp_path):
    config = shop(tmp_path)
    report(config)  # the latest regular run: all five purchases stored in the ledger
    before = stored_tables(tmp_path / "m.db")
    data = report(config, "--as-of", "2025-03-15")
    assert data["stored"] is False and data["notes"][0] == NOT_STORED_NOTE
    assert stored_tables(tmp_path / "m.db") == before
    # As of 2025-03-15 only deals 1–3 exist: 3 × 45 points.  The ledger is derived from
    # that history alone: nothing from the later stored run is carried over and reversed.
    assert data["metrics"]["points_liability"] == 3 * 45
    assert not any("reversed" in note for note in data["notes"])


@pytest.mark.parametrize(("closed", "counted"), [("2025-03-15T23:59:59.500000+03:00", True),
                                                 ("2025-03-16T00:00:00+03:00", False)])
def test_as_of_is_the_last_microsecond_of_the_day(closed, counted):
    moment = parse_as_of("2025-03-15", "Europe/Moscow")
    assert moment is not None and moment.isoformat() == "2025-03-15T23:59:59.999999+03:00"
    when = datetime.fromisoformat(closed)
    purchase = Deal(id=1, contact_id=1, company_id=None, title=None, amount=100.0,
                    currency="RUB", status="won", created_at=when, closed_at=when)
    result = compute([Contact(id=1)], [purchase], [], RulesConfig(), moment)
    assert (result.states[0].purchases == 1) is counted


def test_cli_report_rejects_a_bad_date(tmp_path):
    config = tmp_path / "r.toml"
    Mirror.open(tmp_path / "m.db").close()
    config.write_text('[crm]\nkind = "bitrix24"\n'
                      'webhook_url = "https://portal.example/rest/1/secret/"\n'
                      f'[mirror]\npath = "{tmp_path / "m.db"}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "report", "--as-of", "30.06"])
    assert result.exit_code == 1 and "YYYY-MM-DD" in result.output
