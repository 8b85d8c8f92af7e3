import json
import re
from datetime import UTC, date, datetime

from click.testing import CliRunner

from connector.cli import cli
from connector.mirror import Mirror, SyncState
from connector.report import render_html, report_data
from rules.config import RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal

AS_OF = datetime(2025, 6, 30, 12, tzinfo=UTC)


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


def test_html_is_self_contained_and_escapes_user_data():
    data = report_data(sample(), as_of=AS_OF, names={1: "<script>alert(1)</script>"})
    data["at_risk"] = [{**data["at_risk"][0], "name": "<script>alert(1)</script>"}]
    page = render_html(data)
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r'(src|href)\s*=\s*["\']?https?:', page), "nothing loads from outside"


def test_cli_report_json_and_html(tmp_path):
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
    html = tmp_path / "out.html"
    result = CliRunner().invoke(cli, ["--config", str(config), "report", "--json",
                                      "--as-of", "2025-06-30", "--html", str(html)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert data["buyers"] == 2 and data["metrics"]["period_purchases"] >= 0
    assert html.read_text().count("<svg") >= 4
    stored = Mirror.open(tmp_path / "m.db").db.execute(
        "select count(*) from customer_state").fetchone()[0]
    assert stored == 2


def test_cli_report_rejects_a_bad_date(tmp_path):
    config = tmp_path / "r.toml"
    Mirror.open(tmp_path / "m.db").close()
    config.write_text('[crm]\nkind = "bitrix24"\n'
                      'webhook_url = "https://portal.example/rest/1/secret/"\n'
                      f'[mirror]\npath = "{tmp_path / "m.db"}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "report", "--as-of", "30.06"])
    assert result.exit_code == 1 and "YYYY-MM-DD" in result.output
