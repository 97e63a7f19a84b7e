"""SASL for kq serve: the users file and the server's side of PLAIN and SCRAM-SHA-256/512.

``DATA/serve/users.json`` (mode 0600, ``kq serve --add-user``) keeps SCRAM's
salted keys (RFC 5802, RFC 7677), never a password; PLAIN (RFC 4616) is
checked against the SCRAM-SHA-256 key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets

from ..engine.fileio import atomic_write, make_dirs, read_metadata
from ..errors import KqError, UsageError

log = logging.getLogger("kq.serve")

USERS_DIR = "serve"
USERS_FILE = "users.json"
USERS_FORMAT = 1
SCRAM_ITERATIONS = 8192  # Kafka's minimum is 4096
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_PASSWORD_BYTES = 1024


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
