"""One Kafka cluster's connection, through confluent-kafka (librdkafka): the settings every client
kq makes gets, the admin client, librdkafka's log, and a failed request as kq's error.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout

from ..errors import (
    EXIT_USAGE,
    ClusterError,
    GroupBusy,
    GroupNotFound,
    KqError,
    MissingDependency,
    TopicExists,
    TopicNotFound,
)
from .base import Backend
from .kafka_settings import parse_brokers, redact

DEFAULT_TIMEOUT = 10.0  # seconds to wait for an answer, unless socket.timeout.ms says otherwise


def confluent():
    """The confluent_kafka module, or MissingDependency saying what to install."""
    try:
        import confluent_kafka
    except ImportError:
        raise MissingDependency("a Kafka cluster", "confluent-kafka", "kafka") from None
    return confluent_kafka


class _RecentLog(logging.Handler):
    """librdkafka's log lines: the last few kept to explain an error, echoed only with ``-X debug=...``."""

    def __init__(self, settings: dict, echo: bool):
        super().__init__(logging.DEBUG)
        self.settings = settings
        self.echo = echo
        self.recent: deque[str] = deque(maxlen=3)

    def emit(self, record: logging.LogRecord) -> None:
        line = redact(record.getMessage(), self.settings)
        if record.levelno >= logging.WARNING:
            self.recent.append(line)
        if self.echo:
            print(f"kq: librdkafka: {line}", file=sys.stderr, flush=True)


class KafkaConnection(Backend):
    """The clients of the Kafka cluster at ``brokers`` (kq.backends.kafka.KafkaBackend's base)."""

    def __init__(self, brokers: str, settings: dict | None = None):
        brokers = parse_brokers(brokers)
        self.ck = confluent()
        self.brokers = brokers
        self.settings = dict(settings or {})
        self.description = f"Kafka cluster {brokers}"
        timeout_ms = self.settings.get("socket.timeout.ms")
        try:
            self.timeout = float(timeout_ms) / 1000 if timeout_ms is not None else DEFAULT_TIMEOUT
        except ValueError:
            error = ClusterError(brokers, "bad client setting: socket.timeout.ms must be a number of milliseconds")
            error.exit_code = EXIT_USAGE
            raise error from None
        self.log = logging.getLogger(f"kq.kafka.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self._log = _RecentLog(self.settings, echo="debug" in self.settings)
        self.log.addHandler(self._log)
        self._admin = None
        self._clients: list = []

    # ------------------------------------------------------------------ clients

    def client_config(self, defaults: dict | None = None, **fixed) -> dict:
        """Settings for one librdkafka client: ``defaults``, then the user's, then ``fixed``."""
        return {
            **(defaults or {}),
            "bootstrap.servers": self.brokers,
            **self.settings,
            **fixed,
            "logger": self.log,
        }

    def make(self, kind: str, config: dict):
        """A confluent-kafka client (``Producer``, ``Consumer``); a bad setting is a usage error."""
        try:
            client = getattr(self.ck, kind)(config)
        except (self.ck.KafkaException, ValueError, TypeError) as exc:
            raise self.bad_settings(exc) from None
        return client

    def bad_settings(self, exc: BaseException) -> ClusterError:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], self.ck.KafkaError) else None
        reason = (err.str() if err is not None else str(exc)).strip()  # librdkafka ends some with a newline
        error = ClusterError(self.brokers, f"bad client setting: {redact(reason, self.settings)}")
        error.exit_code = EXIT_USAGE
        return error

    @property
    def admin(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            try:
                self._admin = AdminClient(self.client_config())
            except (self.ck.KafkaException, ValueError, TypeError) as exc:
                raise self.bad_settings(exc) from None
        return self._admin

    def close(self) -> None:
        self._admin = None
        self.log.removeHandler(self._log)

    def error(self, exc: BaseException, what: str, topic: str | None = None, group: str | None = None) -> KqError:
        """The kq error for a failed request (``what``: what kq asked, for the message)."""
        KafkaError = self.ck.KafkaError
        if isinstance(exc, FutureTimeout):
            return ClusterError(self.brokers, f"no answer to {what} within {self.timeout:g} s{self._last_log()}")
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None:
            return ClusterError(self.brokers, f"{what} failed: {redact(str(exc), self.settings)}")
        code = err.code()
        reason = redact(err.str(), self.settings)
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART and topic is not None:
            return TopicNotFound(topic)
        if code == KafkaError.TOPIC_ALREADY_EXISTS and topic is not None:
            return TopicExists(topic)
        if code == KafkaError.GROUP_ID_NOT_FOUND and group is not None:
            return GroupNotFound(group)
        # A commit from outside a group with members is refused as UNKNOWN_MEMBER_ID, members
        # that the cluster may not list included (`kq consume -g` processes behind kq serve).
        if code in (KafkaError.NON_EMPTY_GROUP, KafkaError.UNKNOWN_MEMBER_ID) and group is not None:
            return GroupBusy(group, topic, len(self._members(group)) or 1)
        if code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE):
            refusal = self._refusal()
            if refusal is not None:
                return ClusterError(self.brokers, f"refused this client ({what}): {refusal}")
            return ClusterError(self.brokers, f"cannot be reached ({what}: {reason}){self._last_log()}")
        error = ClusterError(self.brokers, f"{what}: {reason}")
        if code in (
            KafkaError.INVALID_CONFIG,
            KafkaError.INVALID_PARTITIONS,
            KafkaError.INVALID_REPLICATION_FACTOR,
            KafkaError.POLICY_VIOLATION,
            KafkaError.TOPIC_EXCEPTION,
            KafkaError._UNSUPPORTED_FEATURE,
            KafkaError.UNSUPPORTED_VERSION,
            KafkaError._INVALID_ARG,
        ):
            error.exit_code = EXIT_USAGE
        return error

    def error_reason(self, err) -> str:
        """A librdkafka error's text, secrets blanked out."""
        return redact(err.str(), self.settings)

    def _refusal(self) -> str | None:
        """librdkafka's line saying the broker refused this client (an authorization or login
        failure, e.g. another user's kq serve), which otherwise ends as a mere timeout."""
        if self._admin is not None:
            self._admin.poll(0)  # librdkafka hands its log lines over in poll()
        import re

        for line in reversed(self._log.recent):
            found = re.search(
                r"(Broker: [^:(]*authorization failed|SASL authentication error: [^(]*"
                r"|broker might require SASL authentication)",
                line,
                re.I,
            )
            if found:
                return found.group(1).strip()
        return None

    def _last_log(self) -> str:
        return f"; librdkafka said: {self._log.recent[-1]}" if self._log.recent else ""

    def wait(self, future, what: str, topic: str | None = None, group: str | None = None):
        """The result of an admin request's future, or the kq error for its failure."""
        try:
            return future.result(self.timeout + 1)
        except (self.ck.KafkaException, FutureTimeout) as exc:
            raise self.error(exc, what, topic, group) from None

    # A group as the cluster describes it: error() says how many members hold a busy group.
    def _describe_group(self, group: str):
        futures = self.admin.describe_consumer_groups([group], request_timeout=self.timeout)
        return self.wait(futures[group], f"describing group '{group}'", group=group)

    def _members(self, group: str) -> list:
        return list(self._describe_group(group).members or [])
