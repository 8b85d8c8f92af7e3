from pathlib import Path

import click
from click.testing import CliRunner

from connector.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def all_commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        names.append(f"{prefix}{name}")
        if isinstance(command, click.Group):
            names.extend(all_commands(command, f"{prefix}{name} "))
    return names


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    runner = CliRunner()
    for name in all_commands(cli):
        result = runner.invoke(cli, [*name.split(), "--help"])
        assert result.exit_code == 0, name
        command = cli
        for part in name.split():
            command = command.commands[part]  # type: ignore[attr-defined]
        if not isinstance(command, click.Group):
            assert "Example:" in (command.help or ""), name
        assert f"retention {name}" in readme, f"README lacks `retention {name}`"


def test_missing_config_is_one_line_and_non_zero(tmp_path):
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "sync"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: config file not found")


def test_config_errors_are_all_listed(tmp_path):
    config = tmp_path / "r.toml"
    config.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "http://x.ru/rest/1/s/"\nfoo = 1\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert "crm.foo: unknown key" in result.output
    assert "crm.webhook_url" in result.output
    assert "Traceback" not in result.output


def test_config_path_from_environment(tmp_path):
    result = CliRunner().invoke(cli, ["status"],
                                env={"RETENTION_CONFIG": str(tmp_path / "env.toml")})
    assert result.exit_code == 1 and "env.toml" in result.output


def test_status_without_mirror_says_what_to_do(tmp_path):
    config = tmp_path / "r.toml"
    config.write_text(
        '[crm]\nkind = "bitrix24"\nwebhook_url = "https://x.bitrix24.ru/rest/1/s/"\n'
        f'[mirror]\npath = "{tmp_path / "m.db"}"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "status"])
    assert result.exit_code == 1 and "run `retention sync`" in result.output
