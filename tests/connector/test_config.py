from pathlib import Path

import pytest

from connector.config import load_config, parse_config, resolve_config_path
from connector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "k9x7secretvalue"


def test_example_config_loads_with_its_env_var():
    config = load_config(
        ROOT / "config.example.toml",
        {"BITRIX24_WEBHOOK_URL": f"https://example.bitrix24.ru/rest/1/{SECRET}/"},
    )
    assert config.crm.kind == "bitrix24"
    assert config.crm.webhook_url is not None
    assert config.crm.webhook_url.get_secret_value().endswith(f"/{SECRET}/")
    assert SECRET not in repr(config)


def test_env_reference_is_expanded_anywhere():
    config = parse_config(
        {"crm": {"kind": "bitrix24", "webhook_url": "https://${HOST}/rest/1/${SEC}/"},
         "mirror": {"path": "${DIR}/m.db"}},
        {"HOST": "p.bitrix24.ru", "SEC": SECRET, "DIR": "/tmp/x"},
    )
    assert str(config.mirror.path) == "/tmp/x/m.db"


def test_every_error_is_reported_at_once_with_its_toml_path():
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"crm": {"kind": "bitrix24", "webhook_url": "http://portal.example/rest/1/abc/",
                     "colour": "red", "limits": {"drain_per_s": -1}},
             "mirror": {"paht": "x.db"}},
            {},
        )
    paths = [p for p, _ in info.value.problems]
    assert paths == sorted(
        ["crm.colour", "crm.limits.drain_per_s", "crm.webhook_url", "mirror.paht"]
    )
    assert "https" in dict(info.value.problems)["crm.webhook_url"]


def test_missing_env_var_names_key_and_variable_and_nothing_else():
    with pytest.raises(ConfigError) as info:
        parse_config({"crm": {"kind": "bitrix24", "webhook_url": "${NOT_SET_ANYWHERE}"}}, {})
    assert info.value.problems == [
        ("crm.webhook_url", "environment variable NOT_SET_ANYWHERE is not set "
                            "(hint: export NOT_SET_ANYWHERE=...)")
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://a.bitrix24.ru/rest/1/abc/", True),
        ("https://a.bitrix24.ru/rest/1/abc", True),
        ("http://127.0.0.1:8000/rest/1/abc/", True),
        ("http://localhost:8000/rest/12/abc/", True),
        ("http://[::1]:8000/rest/12/abc/", True),
        ("http://a.bitrix24.ru/rest/1/abc/", False),
        ("https://a.bitrix24.ru/rest/abc/", False),
        ("https://a.bitrix24.ru/rest/1/abc/crm.deal.list", False),
        ("a.bitrix24.ru/rest/1/abc/", False),
    ],
)
def test_webhook_url_shapes(url, ok):
    data = {"crm": {"kind": "bitrix24", "webhook_url": url}}
    if ok:
        parse_config(data, {})
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(data, {})
        assert "abc" not in str(info.value), "the secret must not be echoed"


def test_bitrix24_requires_webhook_url():
    with pytest.raises(ConfigError, match="webhook_url is required"):
        parse_config({"crm": {"kind": "bitrix24"}}, {})


def test_config_is_frozen():
    config = parse_config({"crm": {"kind": "bitrix24",
                                   "webhook_url": "https://a.b/rest/1/s/"}}, {})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        config.mirror = None  # type: ignore[misc]


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[crm\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", {})


def test_config_path_resolution_order():
    assert resolve_config_path("a.toml", {"RETENTION_CONFIG": "b.toml"}) == Path("a.toml")
    assert resolve_config_path(None, {"RETENTION_CONFIG": "b.toml"}) == Path("b.toml")
    assert resolve_config_path(None, {}) == Path("retention.toml")




def test_every_problem_carries_a_hint():
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"crm": {"kind": "bitrix", "webhook_url": "https://a.b/rest/1/s/", "timeout_s": "x",
                     "limits": {"bucket_size": 0}, "contact_fields": "UF_CRM_NPS"},
             "sync": {"entities": ["leads"], "reconcile": "sometimes"}, "mirror": {"path": 5},
             "extra": {}},
            {},
        )
    problems = dict(info.value.problems)
    assert set(problems) == {"crm.kind", "crm.timeout_s", "crm.limits.bucket_size",
                             "crm.contact_fields", "sync.entities[0]", "sync.reconcile",
                             "mirror.path", "extra"}
    assert all("(hint: " in message for message in problems.values()), problems
    assert "without quotes" in problems["crm.timeout_s"]


def test_a_missing_section_names_where_to_look():
    with pytest.raises(ConfigError) as info:
        parse_config({}, {})
    assert info.value.problems == [("crm", "required key is missing "
                                           "(hint: config.example.toml shows crm)")]


@pytest.mark.parametrize("url", [
    f"https://admin:{SECRET}@a.bitrix24.ru/rest/1/abc/",
    "http://127.0.0.1.example.com/rest/1/abc/",
    "https://a.bitrix24.ru/rest/1/abc/?debug=1",
])
def test_webhook_urls_that_would_leak_or_mislead_are_refused(url):
    with pytest.raises(ConfigError) as info:
        parse_config({"crm": {"kind": "bitrix24", "webhook_url": url}}, {})
    (path, message), = info.value.problems
    assert path == "crm.webhook_url" and "(hint: " in message
    assert SECRET not in str(info.value) and "abc" not in str(info.value)


def test_a_webhook_url_pasted_with_whitespace_is_accepted_trimmed():
    config = parse_config({"crm": {"kind": "bitrix24", "webhook_url": "${HOOK}"}},
                          {"HOOK": f"  https://a.bitrix24.ru/rest/1/{SECRET}/\n"})
    assert config.crm.webhook_url is not None
    assert config.crm.webhook_url.get_secret_value() == f"https://a.bitrix24.ru/rest/1/{SECRET}/"
