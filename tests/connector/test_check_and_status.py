"""`retention check` and `retention status` against the emulator over loopback."""

from click.testing import CliRunner

from adapters.bitrix24.emulator import BitrixEmulator, DataConfig, EmulatorLimits, Portal, serve
from connector.cli import cli

PORTAL = Portal.generate(DataConfig(seed=4, contacts=60, deals=200))


def run(tmp_path, url, *args):
    config = tmp_path / "retention.toml"
    config.write_text(f'[crm]\nkind = "bitrix24"\nwebhook_url = "${{HOOK}}"\n'
                      f'[mirror]\npath = "{tmp_path / "m.db"}"\n[crm.retry]\nmax_attempts = 2\n')
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={"HOOK": url})


def emulator(**kwargs):
    return BitrixEmulator(PORTAL, secret="checksecret", limits=EmulatorLimits(enabled=False),
                          **kwargs)


def test_check_passes_and_reports_counts(tmp_path):
    with serve(emulator()) as server:
        result = run(tmp_path, server.webhook_url, "check")
    assert result.exit_code == 0, result.output
    assert "crm.deal.list: 200 records visible" in result.output
    assert "checksecret" not in result.output


def test_check_explains_a_wrong_webhook(tmp_path):
    with serve(emulator()) as server:
        result = run(tmp_path, server.webhook_url.replace("checksecret", "wrongsecret"),
                     "check")
    assert result.exit_code == 1
    assert "secret changed" in result.output and "wrongsecret" not in result.output


def test_check_explains_missing_scope(tmp_path):
    with serve(emulator(scopes=("user",))) as server:
        result = run(tmp_path, server.webhook_url, "check")
    assert result.exit_code == 1
    assert "lacks scope(s) crm" in result.output


def test_status_after_sync_shows_counts_and_runs(tmp_path):
    with serve(emulator()) as server:
        assert run(tmp_path, server.webhook_url, "sync").exit_code == 0
        result = run(tmp_path, server.webhook_url, "status", "--json")
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["counts"]["deals"]["live"] == 200
    assert {r["entity"] for r in data["last_runs"]} == {"contacts", "companies", "deals"}


def test_a_failing_entity_is_one_line_and_exit_1(tmp_path):
    with serve(emulator(scopes=("user",))) as server:
        result = run(tmp_path, server.webhook_url, "sync")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "insufficient_scope" in result.output


def test_a_missing_scope_is_not_also_blamed_on_crm_permissions(tmp_path):
    with serve(emulator(scopes=("user",))) as server:
        result = run(tmp_path, server.webhook_url, "check")
    assert result.exit_code == 1
    assert "lacks scope(s) crm" in result.output
    assert "Access permissions" not in result.output, "the reads were not even tried"


def _checks_against(answers):
    """run_checks on a client whose portal answers ``answers[method]`` (status, body)."""
    import httpx

    from adapters.bitrix24.client import Bitrix24Client
    from connector.checks import run_checks
    from connector.config import parse_config
    from connector.http import RetryPolicy

    def portal(request):
        method = request.url.path.rsplit("/", 1)[-1]
        status, body = answers.get(method, (200, {"result": [], "total": 3}))
        return httpx.Response(status, json=body)

    url = "https://p.bitrix24.ru/rest/1/unitsecret/"
    config = parse_config({"crm": {"kind": "bitrix24", "webhook_url": url},
                           "mirror": {"path": "m.db"}}, {})
    client = Bitrix24Client(url, http=httpx.Client(transport=httpx.MockTransport(portal)),
                            retry=RetryPolicy(max_attempts=1))
    return {r.name: r for r in run_checks(config, client)}


def test_read_failures_are_explained_by_their_cause():
    scope_error = (403, {"error": "insufficient_scope", "error_description": "higher privileges"})
    denied = (400, {"error": "", "error_description": "Access denied."})
    results = _checks_against({"profile": (200, {"result": {"ID": "1"}}),
                               "scope": (200, {"result": ["crm"]}),
                               "crm.contact.list": scope_error, "crm.deal.list": denied})
    assert "lacks the crm scope" in results["crm.contact.list"].detail
    assert "Access permissions" in results["crm.deal.list"].detail
    assert results["crm.company.list"].ok and "3 records" in results["crm.company.list"].detail
