"""Who is at the other end of a local TCP connection: the uid owning the client's socket.

The client's socket is the one whose local address is the connection's
remote end and whose remote address is the server's end. The kernel is asked
for that one socket (sock_diag over netlink, what ``ss`` uses); where that is
not offered, /proc/net/tcp and tcp6 are read, which takes milliseconds on a
machine with thousands of sockets. Linux only: elsewhere no peer is known.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct

SOCKET_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TIME_WAIT, LISTEN = "06", "0A"  # socket states in those tables


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
