"""The pytest fixtures ``kq_broker`` (one broker per test) and ``kq_broker_session`` (one per session).

Registered through the ``pytest11`` entry point, so a suite that installs
kq's ``kafka`` extra has them with no conftest.py. Loading the plugin costs
a suite that does not use them nothing: this module imports only pytest,
and the broker (kq serve, the protocol library) is imported when a fixture
is first requested.

When a test that used a broker fails, its report gets a section "kq topics"
with what the topics held, a line per record, as pytest shows captured output.
"""

from __future__ import annotations

import pytest

FIXTURES = ("kq_broker", "kq_broker_session")


@pytest.fixture
def kq_broker():
    """A fresh, empty Kafka broker for this test (``.bootstrap_servers``, ``.create_topic()``, ``.records()``)."""
    from .broker import KafkaBroker

    with KafkaBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def kq_broker_session():
    """One Kafka broker for the whole session (each xdist worker has its own): tests share its topics."""
    from .broker import KafkaBroker

    with KafkaBroker() as broker:
        yield broker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    values = getattr(item, "funcargs", None) or {}
    for name in FIXTURES:
        broker = values.get(name)
        if broker is None or not getattr(broker, "data_dir", None):
            continue
        from .contents import summary

        report.sections.append((f"kq topics ({name}, {broker.data_dir})", summary(broker.data_dir)))
