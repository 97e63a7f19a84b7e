"""Who may use kq serve: the local peer's uid, SASL users, and each connection's state.

Without SASL, a connection is let in only when it comes from a local process
whose user could write the data directory itself (so serve lends nobody
rights they lack): root, the user running kq serve, or a user whom the
directory's mode bits give read, write and search (its owner for a 0700
directory). The peer's uid is the kernel's answer for the client's socket,
the one whose local address is the connection's remote end and whose remote
address is the server's end (sock_diag, else /proc/net/tcp and tcp6).

With users in ``DATA/serve/users.json`` (``kq serve --add-user``), any
client may instead authenticate with SASL/PLAIN or SCRAM-SHA-256/512; the
file keeps SCRAM's salted keys (RFC 5802, RFC 7677), never a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import stat
import struct

from ..errors import KqError, UsageError
from ..fileio import atomic_write, make_dirs, read_metadata

log = logging.getLogger("kq.serve")

USERS_DIR = "serve"
USERS_FILE = "users.json"
USERS_FORMAT = 1
SCRAM_ITERATIONS = 8192  # Kafka's minimum is 4096
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_PASSWORD_BYTES = 1024
SOCKET_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TIME_WAIT, LISTEN = "06", "0A"  # socket states in those tables

# Kafka's error codes for the SASL exchange (kafka.errors)
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
CLUSTER_AUTHORIZATION_FAILED = 31
SASL_AUTHENTICATION_FAILED = 58


# --------------------------------------------------------------------- the peer's uid


def _address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/tcp(6): hex words in host byte order, then the port in hex."""
    host, port = text.split(":")
    raw = b"".join(struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    return _plain(ipaddress.ip_address(raw)), int(port, 16)


def _plain(address):
    """An IPv4-mapped IPv6 address as the IPv4 address (a dual-stack listener sees those)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _endpoint(sockaddr) -> tuple | None:
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return None
    try:
        return _plain(ipaddress.ip_address(sockaddr[0].split("%")[0])), int(sockaddr[1])
    except ValueError:
        return None


def peer_uid(peer, local) -> int | None:
    """The uid owning the other end of a TCP connection, if that end is a socket of this machine.

    ``peer`` and ``local`` are the connection's addresses as the server sees
    them (getpeername, getsockname). None: not a local process (or gone).
    The kernel is asked for that one socket (sock_diag over netlink, what
    ``ss`` uses); where that is not offered, /proc/net/tcp(6) is read, which
    takes milliseconds on a machine with thousands of sockets.
    """
    theirs, ours = _endpoint(peer), _endpoint(local)
    if theirs is None or ours is None:
        return None
    try:
        return _sock_diag_uid(theirs, ours)
    except OSError:
        return _proc_net_uid(theirs, ours)


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF
TCP_TIME_WAIT = 6
NLMSG_HEADER = struct.Struct("=IHHII")


def _sock_diag_uid(theirs, ours) -> int | None:
    """The uid of the socket whose local end is ``theirs`` and remote end ``ours``, from the kernel."""
    for family, (src, dst) in _diag_addresses(theirs[0], ours[0]):
        # inet_diag_req_v2 (family, protocol, extensions, pad, states), then inet_diag_sockid:
        # ports (big-endian), addresses (network order), interface, cookie (none).
        request = (
            struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
            + struct.pack(">HH", theirs[1], ours[1])
            + src
            + dst
            + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
        )
        message = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(1.0)
            diag.send(message + request)
            answer = diag.recv(8192)
        if len(answer) < NLMSG_HEADER.size:
            continue
        kind = NLMSG_HEADER.unpack_from(answer)[1]
        if kind != SOCK_DIAG_BY_FAMILY or len(answer) < NLMSG_HEADER.size + 72:
            continue  # NLMSG_ERROR: no such socket in that family
        body = answer[NLMSG_HEADER.size :]
        # The kernel falls back to a listening socket on that port, and a TIME_WAIT entry
        # is no socket of anyone's (it shows uid 0): only the exact connection counts.
        if body[1] == TCP_TIME_WAIT or body[4:40] != request[8:44]:
            return None
        return struct.unpack_from("=I", body, 64)[0]
    return None


def _diag_addresses(theirs, ours):
    """(family, (their address, our address) as 16 bytes) to ask for: IPv4, then IPv4-mapped IPv6."""
    if isinstance(theirs, ipaddress.IPv4Address) and isinstance(ours, ipaddress.IPv4Address):
        yield socket.AF_INET, (theirs.packed.ljust(16, b"\0"), ours.packed.ljust(16, b"\0"))
        mapped = (ipaddress.IPv6Address(f"::ffff:{theirs}"), ipaddress.IPv6Address(f"::ffff:{ours}"))
        yield socket.AF_INET6, (mapped[0].packed, mapped[1].packed)
    elif isinstance(theirs, ipaddress.IPv6Address) and isinstance(ours, ipaddress.IPv6Address):
        yield socket.AF_INET6, (theirs.packed, ours.packed)


def _proc_net_uid(theirs, ours) -> int | None:
    uids = set()
    for table in SOCKET_TABLES:
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # A TIME_WAIT entry is no socket of anyone's and shows uid 0: never trust it.
            if len(fields) < 8 or fields[3] in (TIME_WAIT, LISTEN):
                continue
            try:
                if _address(fields[1]) == theirs and _address(fields[2]) == ours:
                    uids.add(int(fields[7]))
            except ValueError:
                continue
    return uids.pop() if len(uids) == 1 else None


def user_groups(uid: int) -> set[int]:
    """The groups the user database gives ``uid`` (a process may hold fewer; it never holds more)."""
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    try:
        return set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        return {entry.pw_gid}


def could_write(uid: int, path: str) -> bool:
    """Whether ``uid`` could read, write and enter ``path`` by its mode bits (root always can)."""
    if uid == 0:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    mode = stat.S_IMODE(st.st_mode)
    if uid == st.st_uid:
        return mode & 0o700 == 0o700
    if st.st_gid in user_groups(uid):
        return mode & 0o070 == 0o070
    return mode & 0o007 == 0o007


def user_name(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


# --------------------------------------------------------------------- users and their SCRAM keys


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hmac(key: bytes, message: bytes, hash_name: str) -> bytes:
    return hmac.new(key, message, hash_name).digest()


def scram_keys(password: bytes, salt: bytes, iterations: int, hash_name: str) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of RFC 5802 for a password."""
    salted = hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)
    client_key = _hmac(salted, b"Client Key", hash_name)
    return hashlib.new(hash_name, client_key).digest(), _hmac(salted, b"Server Key", hash_name)


class Users:
    """``DATA/serve/users.json``: SASL users and their SCRAM credentials, mode 0600."""

    def __init__(self, data_path: str):
        self.directory = os.path.join(data_path, USERS_DIR)
        self.path = os.path.join(self.directory, USERS_FILE)

    def load(self) -> dict[str, dict]:
        try:
            meta = read_metadata(self.path)
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            raise KqError(f"{self.path}: {exc}") from None
        users = meta.get("users") if isinstance(meta, dict) else None
        if meta.get("format") != USERS_FORMAT or not isinstance(users, dict):
            raise KqError(f"{self.path}: not a kq serve users file of format {USERS_FORMAT}")
        return users

    def names(self) -> list[str]:
        return sorted(self.load())

    def add(self, name: str, password: bytes) -> bool:
        """Add ``name`` or change its password; True if it is new."""
        check_user_name(name)
        if not password:
            raise UsageError("the password is empty")
        if len(password) > MAX_PASSWORD_BYTES:
            raise UsageError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        users = self.load()
        entry = {}
        for mechanism, hash_name in SCRAM_HASHES.items():
            salt = secrets.token_bytes(32)
            stored, server = scram_keys(password, salt, SCRAM_ITERATIONS, hash_name)
            entry[mechanism] = {
                "salt": _b64(salt),
                "iterations": SCRAM_ITERATIONS,
                "stored_key": _b64(stored),
                "server_key": _b64(server),
            }
        new = name not in users
        users[name] = entry
        self._save(users)
        return new

    def remove(self, name: str) -> bool:
        users = self.load()
        if name not in users:
            return False
        del users[name]
        self._save(users)
        return True

    def _save(self, users: dict) -> None:
        make_dirs(self.directory)
        data = json.dumps({"format": USERS_FORMAT, "users": users}, indent=1, sort_keys=True).encode()
        atomic_write(self.path, data + b"\n")

    def credential(self, name: str, mechanism: str) -> tuple[bytes, int, bytes, bytes] | None:
        """(salt, iterations, StoredKey, ServerKey) of ``name`` for a SCRAM mechanism, or None."""
        try:
            entry = self.load().get(name)
        except KqError as exc:
            log.error("%s", exc)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get(mechanism), dict):
            return None
        c = entry[mechanism]
        try:
            return (
                base64.b64decode(c["salt"], validate=True),
                int(c["iterations"]),
                base64.b64decode(c["stored_key"], validate=True),
                base64.b64decode(c["server_key"], validate=True),
            )
        except (KeyError, TypeError, ValueError):
            log.error("%s: the credentials of %s are malformed", self.path, name)
            return None

    def check_password(self, name: str, password: bytes) -> bool:
        """PLAIN: the password against the stored SCRAM-SHA-256 key (no plaintext is kept)."""
        mechanism = "SCRAM-SHA-256"
        found = self.credential(name, mechanism)
        if found is None or len(password) > MAX_PASSWORD_BYTES:
            return False
        salt, iterations, stored, _ = found
        return hmac.compare_digest(scram_keys(password, salt, iterations, SCRAM_HASHES[mechanism])[0], stored)


def check_user_name(name: str) -> None:
    if not name or len(name) > 255 or any(ord(c) < 0x20 or c in ",=" for c in name):
        raise UsageError(f"{name!r} is not a user name (1-255 printable characters, no ',' or '=')")


# --------------------------------------------------------------------- the SASL exchanges


class AuthenticationFailed(Exception):
    pass


class ScramExchange:
    """The server's side of one SCRAM authentication (RFC 5802): two client messages."""

    def __init__(self, users: Users, mechanism: str):
        self.users = users
        self.mechanism = mechanism
        self.hash_name = SCRAM_HASHES[mechanism]
        self.user: str | None = None
        self.done = False
        self._first_bare = ""
        self._server_first = ""
        self._gs2 = ""
        self._nonce = ""
        self._keys: tuple[bytes, bytes] = (b"", b"")

    def step(self, message: bytes) -> bytes:
        text = message.decode("utf-8")
        if not self._nonce:
            return self._first(text).encode()
        return self._final(text).encode()

    def _first(self, text: str) -> str:
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            raise AuthenticationFailed("malformed client-first message (channel binding is not offered)")
        self._gs2 = f"{parts[0]},{parts[1]},"
        self._first_bare = parts[2]
        attrs = _attributes(self._first_bare)
        name = _sasl_name(attrs.get("n", ""))
        client_nonce = attrs.get("r", "")
        if not name or not client_nonce:
            raise AuthenticationFailed("malformed client-first message")
        found = self.users.credential(name, self.mechanism)
        if found is None:
            raise AuthenticationFailed(f"unknown user {name!r}")
        salt, iterations, stored, server = found
        self.user = name
        self._keys = (stored, server)
        self._nonce = client_nonce + secrets.token_urlsafe(18)
        self._server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        return self._server_first

    def _final(self, text: str) -> str:
        if self.done:
            raise AuthenticationFailed("the exchange is over")
        without_proof, sep, proof_attr = text.rpartition(",p=")
        attrs = _attributes(without_proof)
        # Kafka checks that the nonce ends with the server's: librdkafka sends its own nonce twice.
        if not sep or not attrs.get("r", "").endswith(self._nonce):
            raise AuthenticationFailed("malformed client-final message or wrong nonce")
        if attrs.get("c") != _b64(self._gs2.encode()):
            raise AuthenticationFailed("channel binding does not match the client-first message")
        try:
            proof = base64.b64decode(proof_attr, validate=True)
        except ValueError:
            raise AuthenticationFailed("malformed proof") from None
        stored, server = self._keys
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(stored, auth_message, self.hash_name)
        if len(proof) != len(signature):
            raise AuthenticationFailed("malformed proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.new(self.hash_name, client_key).digest(), stored):
            raise AuthenticationFailed(f"wrong password for {self.user!r}")
        self.done = True
        return "v=" + _b64(_hmac(server, auth_message, self.hash_name))


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def _sasl_name(text: str) -> str:
    return text.replace("=2C", ",").replace("=3D", "=")


def check_plain(users: Users, message: bytes) -> str:
    """PLAIN (RFC 4616): ``authzid NUL authcid NUL password``; the user, or AuthenticationFailed."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise AuthenticationFailed("malformed PLAIN message")
    authzid, name_bytes, password = parts
    name = name_bytes.decode("utf-8", errors="replace")
    if authzid and authzid != name_bytes:
        raise AuthenticationFailed("PLAIN: acting for another user is not offered")
    if not users.check_password(name, password):
        raise AuthenticationFailed(f"wrong user name or password ({name!r})")
    return name


# --------------------------------------------------------------------- the policy and each connection


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
