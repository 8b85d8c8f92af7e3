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
