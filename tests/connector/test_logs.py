import logging

import pytest

from connector.logs import configure_logging

SECRET = "logsecret8899"
URL = f"https://p.bitrix24.ru/rest/1/{SECRET}/crm.deal.list"


@pytest.fixture
def our_handler():
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_crm_retention", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_the_stderr_handler_redacts_message_arguments_and_traceback(our_handler, capsys):
    configure_logging("DEBUG", secrets=[SECRET])
    log = logging.getLogger("crm_retention.test")
    log.warning("calling %s", URL)
    try:
        raise RuntimeError(f"failed at {URL}")
    except RuntimeError:
        log.exception("boom %s", SECRET)
    err = capsys.readouterr().err
    assert "calling https://p.bitrix24.ru/rest/1/***" in err and "RuntimeError" in err
    assert SECRET not in err


def test_other_handlers_get_the_record_untouched_whatever_the_order(our_handler):
    # A handler added after ours (a test's capture, an application's own logging) must
    # not find records rewritten: otherwise what it sees depends on handler order.
    configure_logging("DEBUG", secrets=[SECRET])
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    collector = Collect()
    logging.getLogger().addHandler(collector)
    try:
        logging.getLogger("crm_retention.test").info("value %s", "plain")
    finally:
        logging.getLogger().removeHandler(collector)
    assert [r.getMessage() for r in seen] == ["value plain"]
    assert seen[0].args == ("plain",), "arguments were not folded into the message"
