"""Who may use kq serve: the local peer's uid, SASL users, and each connection's state.

Without SASL, a connection is let in only when it comes from a local process
whose user could write the data directory itself (so serve lends nobody
rights they lack): root, the user running kq serve, or a user whom the
directory's mode bits give read, write and search (its owner for a 0700
directory). The peer's uid comes from the kernel (``peer``).

With users in ``DATA/serve/users.json`` (``kq serve --add-user``), any
client may instead log in with SASL/PLAIN or SCRAM-SHA-256/512 (``sasl``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from ..errors import KqError
from .peer import could_write, peer_uid, user_name
from .sasl import MECHANISMS, AuthenticationFailed, ScramExchange, Users, check_plain

log = logging.getLogger("kq.serve")

# Kafka's error codes for the SASL exchange (kafka.errors)
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
CLUSTER_AUTHORIZATION_FAILED = 31
SASL_AUTHENTICATION_FAILED = 58


class Refused(Exception):
    """A connection that is not let in: ``code`` for the client, the message for the server's log."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Access:
    """The server-wide rule: who is let in without SASL, and the SASL users."""

    def __init__(self, data_path: str, insecure: bool = False):
        self.data_path = data_path
        self.insecure = insecure
        self.users = Users(data_path)
        self.serving_uid = os.geteuid()

    def sasl_enabled(self) -> bool:
        if not self.data_path:
            return False
        try:
            return bool(self.users.load())
        except KqError:
            return True  # a damaged file refuses every login instead of dropping the requirement

    def local_user_allowed(self, uid: int) -> bool:
        return uid == self.serving_uid or could_write(uid, self.data_path)

    def session(self, peer, local) -> Session:
        if self.insecure:
            return Session(self, admitted=True, who=f"{_shown(peer)} (--insecure)")
        uid = peer_uid(peer, local)
        if uid is not None and self.local_user_allowed(uid):
            return Session(self, admitted=True, who=user_name(uid), uid=uid)
        return Session(
            self, admitted=False, who=user_name(uid) if uid is not None else f"remote {_shown(peer)}", uid=uid
        )

    def describe(self) -> str:
        """Who may connect, for the line kq serve prints at start."""
        if self.insecure:
            return "anyone who reaches the port (--insecure)"
        names = sorted({user_name(0), user_name(self.serving_uid)})
        local = f"local processes of {' and '.join(names)} or of any user who can write {self.data_path}"
        try:
            users = self.users.names()
        except KqError as exc:
            return f"{local}; no SASL login ({exc})"
        if users:
            return f"{local}; anyone with SASL (PLAIN, SCRAM-SHA-256/512) as {', '.join(users)}"
        return f"{local}; no SASL users (kq serve --add-user NAME)"


class Session:
    """One connection's authentication state."""

    def __init__(self, access: Access, admitted: bool, who: str, uid: int | None = None):
        self.access = access
        self.admitted = admitted
        self.who = who
        self.uid = uid
        self.mechanism: str | None = None
        self.scram: ScramExchange | None = None
        self.user: str | None = None
        self.closing: str | None = None  # close after the answer, for this reason

    def refusal(self) -> Refused:
        """Why a connection that did not authenticate is refused."""
        if self.access.sasl_enabled():
            return Refused(SASL_AUTHENTICATION_FAILED, f"{self.who} did not authenticate (SASL is required)")
        return Refused(
            CLUSTER_AUTHORIZATION_FAILED,
            f"{self.who} may not use {self.access.data_path} (only users who can write it; "
            "add SASL users with kq serve --add-user)",
        )

    def handshake(self, mechanism: str) -> tuple[int, list[str]]:
        """SaslHandshake: (error code, mechanisms offered)."""
        offered = list(MECHANISMS) if self.access.sasl_enabled() else []
        if self.mechanism is not None or (self.user is not None):
            return ILLEGAL_SASL_STATE, offered
        if mechanism not in offered:
            return UNSUPPORTED_SASL_MECHANISM, offered
        self.mechanism = mechanism
        # Authenticating decides: a connection that asks to log in is judged by the login alone.
        self.admitted = False
        return 0, offered

    def authenticate(self, message: bytes) -> bytes:
        """SaslAuthenticate: the bytes to answer; AuthenticationFailed or Refused on failure."""
        if self.mechanism is None or self.user is not None:
            raise Refused(ILLEGAL_SASL_STATE, f"{self.who}: SaslAuthenticate out of order")
        try:
            if self.mechanism == "PLAIN":
                self.user = check_plain(self.access.users, message)
                answer = b""
            else:
                if self.scram is None:
                    self.scram = ScramExchange(self.access.users, self.mechanism)
                answer = self.scram.step(message)
                if self.scram.done:
                    self.user = self.scram.user
        except UnicodeDecodeError:
            raise AuthenticationFailed("the message is not UTF-8") from None
        if self.user is not None:
            self.admitted = True
            self.who = f"SASL user {self.user!r} from {self.who}"
            log.info("%s authenticated with %s", self.who, self.mechanism)
        return answer


def _shown(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


# --------------------------------------------------------------------- the Kafka messages

SASL_HANDSHAKE_KEY = 17
SASL_AUTHENTICATE_KEY = 36
API_VERSIONS_KEY = 18
SASL_KEYS = (SASL_HANDSHAKE_KEY, SASL_AUTHENTICATE_KEY)


def answer(request, session: Session | None):
    """The answer to a request that authentication decides, or None when the broker answers it.

    Sets ``session.closing`` (the reason, for the log) when the connection must
    be closed after the answer, or raises Refused when it must be closed with
    no answer at all.
    """
    from kafka.protocol.metadata import ApiVersionsResponse
    from kafka.protocol.sasl import SaslAuthenticateResponse, SaslHandshakeResponse

    key, version, body = request.api_key, request.api_version, request.body
    if session is None:  # a server without an access rule (a library caller's): no SASL
        session = Session(Access("", insecure=True), admitted=True, who="client")
    if key == SASL_HANDSHAKE_KEY:
        code, offered = session.handshake(body.mechanism)
        if code == ILLEGAL_SASL_STATE:
            session.closing = f"{session.who}: a second SaslHandshake"
        elif code:
            session.closing = f"{session.who}: SASL mechanism {body.mechanism!r} is not offered"
        return SaslHandshakeResponse(version=version, error_code=code, mechanisms=offered)
    if key == SASL_AUTHENTICATE_KEY:
        try:
            auth_bytes = session.authenticate(bytes(body.auth_bytes or b""))
        except (AuthenticationFailed, Refused) as exc:
            code = exc.code if isinstance(exc, Refused) else SASL_AUTHENTICATION_FAILED
            session.closing = f"{session.who}: SASL {session.mechanism} authentication failed: {exc}"
            return SaslAuthenticateResponse(
                version=version,
                error_code=code,
                error_message=(
                    "Authentication failed during authentication due to invalid credentials "
                    f"with SASL mechanism {session.mechanism}"
                ),
                auth_bytes=b"",
                session_lifetime_ms=0,
            )
        return SaslAuthenticateResponse(
            version=version, error_code=0, error_message=None, auth_bytes=auth_bytes, session_lifetime_ms=0
        )
    if session.admitted:
        return None
    refused = session.refusal()
    if key == API_VERSIONS_KEY and refused.code == SASL_AUTHENTICATION_FAILED:
        return None  # the client needs the API list to start SASL
    if key == API_VERSIONS_KEY:
        # The first request of every client: an error here is what librdkafka
        # (kcat, confluent-kafka, kq -b) and kafka-python print.
        # Clients read an ApiVersions answer that carries an error as version 0 (as Kafka sends it).
        session.closing = str(refused)
        return ApiVersionsResponse(version=0, error_code=refused.code, api_keys=[])
    raise refused
