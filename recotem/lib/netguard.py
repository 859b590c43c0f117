"""SSRF guard for data-source URLs (CSV over HTTP, SQLAlchemy) and webhook URLs.

Policy (``RECOTEM_ALLOWED_SOURCE_HOSTS`` is the administrator's allow list):

* Allow-list entries are host names (``db.internal``, matched exactly and
  case-insensitively), IP addresses (``127.0.0.1``, ``::1``), CIDR networks
  (``10.0.0.0/8``), the wildcard ``*``, and for SQLite ``sqlite:/abs/path``
  (a file, or a directory whose files are allowed).
* ``*`` allows any host whose addresses are all public. It never opens
  loopback, private, link-local, reserved, multicast, unspecified or other
  non-global addresses: those must be listed by name, IP or CIDR. An empty list
  allows nothing, so a fresh install cannot reach anything until an admin says so.
* A host listed by name is trusted whatever it resolves to (that is how
  ``db.internal`` on a private network is meant to work). Any other host is
  resolved with ``getaddrinfo`` and EVERY address must pass, so a name with one
  public and one private record is refused. Numeric tricks such as
  ``http://2130706433/`` resolve to 127.0.0.1 and are caught the same way.
* HTTP URLs must be ``http``/``https``. SQLAlchemy URLs must be PostgreSQL,
  MySQL/MariaDB or SQLite, may only carry harmless query options (``host=``,
  ``unix_socket=`` or ``read_default_file=`` would redirect the connection or
  read server files), and may never point at the server of Recotem's own database
  (same port on the same machine, whatever the database name).

DNS rebinding: an HTTP client that resolves the name again when it connects can be
sent elsewhere by a DNS server that answers differently the second time. Use
:mod:`recotem.lib.safehttp`, which connects to the addresses
:func:`resolve_url_allowed` checked and re-checks every redirect. Database drivers
still resolve again (libpq ``hostaddr`` could pin PostgreSQL; not done yet).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "CheckedUrl",
    "UrlNotAllowed",
    "check_sqlalchemy_url_allowed",
    "check_url_allowed",
    "is_same_database_server",
    "parse_allowed_hosts",
    "resolve_url_allowed",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING: Final = "RECOTEM_ALLOWED_SOURCE_HOSTS"
_HTTP_SCHEMES: Final = frozenset({"http", "https"})
_DEFAULT_PORTS: Final = {
    "http": 80,
    "https": 443,
    "postgresql": 5432,
    "mysql": 3306,
    "mariadb": 3306,
}
# Query options that only tune the connection. Everything else is refused because
# libpq/MySQL options like host=, hostaddr=, service=, unix_socket=,
# read_default_file= or local_infile= redirect the connection or read local files.
_SAFE_DB_QUERY_KEYS: Final = frozenset(
    {"sslmode", "ssl_mode", "charset", "connect_timeout", "application_name"}
)


class UrlNotAllowed(ValueError):
    """A URL the SSRF policy refuses; ``str()`` is safe to show to the user."""


def parse_allowed_hosts(value: str) -> list[str]:
    """Split the ``RECOTEM_ALLOWED_SOURCE_HOSTS`` setting on commas and whitespace."""
    return [entry for entry in value.replace(",", " ").split() if entry]


@dataclass(frozen=True)
class _AllowList:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    sqlite_paths: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _AllowList:
        wildcard = False
        names: set[str] = set()
        networks: list[IPNetwork] = []
        sqlite_paths: list[str] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                wildcard = True
            elif entry.lower().startswith("sqlite:"):
                # Relative paths would depend on the worker's cwd; ignore them.
                path = entry[len("sqlite:") :]
                if os.path.isabs(path):
                    sqlite_paths.append(os.path.realpath(path))
            else:
                try:
                    # strict=False: "10.0.0.1/8" means the /8 the admin had in mind.
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError:
                    names.add(_normalize_host(entry))
        return cls(wildcard, frozenset(names), tuple(networks), tuple(sqlite_paths))

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Return every address ``host`` resolves to. Tests replace this function."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _non_public_reason(ip: IPAddress) -> str | None:
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) reaches the IPv4 host.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        # is_global also catches shared address space (100.64.0.0/10) and friends.
        (not ip.is_global, "non-public"),
    )
    return next((reason for flag, reason in checks if flag), None)


def _check_host(host: str, port: int, allow: _AllowList, *, what: str) -> list[IPAddress]:
    """Refuse ``host`` unless the allow list permits it; return its addresses."""
    name = _normalize_host(host)
    if not name:
        raise UrlNotAllowed(f"The {what} has no host name.")
    if name in allow.names:
        return []
    try:
        addresses = _resolve(name, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise UrlNotAllowed(f"Cannot resolve host '{name}' of the {what}.") from exc
    if not addresses:
        raise UrlNotAllowed(f"Cannot resolve host '{name}' of the {what}.")
    for ip in addresses:
        if allow.allows_ip(ip):
            continue
        reason = _non_public_reason(ip)
        if reason is not None:
            raise UrlNotAllowed(
                f"Host '{name}' resolves to {ip}, a {reason} address; add it to {SETTING} "
                "if Recotem should connect to it."
            )
        if not allow.wildcard:
            raise UrlNotAllowed(
                f"Host '{name}' is not in {SETTING}; ask an administrator to allow it."
            )
    return addresses


@dataclass(frozen=True)
class CheckedUrl:
    """An HTTP(S) URL that passed the policy, with the addresses it may be connected to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def check_url_allowed(
    url: str,
    *,
    allowed_hosts: Iterable[str],
    forbidden_hosts: Iterable[tuple[str, int | None]] = (),
) -> None:
    """Raise :class:`UrlNotAllowed` unless an HTTP(S) URL may be fetched or posted to.

    Steps: require http/https and a host; refuse ``forbidden_hosts`` entries
    (``(host, port)``, port ``None`` meaning any; e.g. Recotem's own web server,
    so a webhook cannot call Recotem's API) by name or by resolved address;
    then apply the allow-list policy described in the module docstring.
    Side effect: DNS look-ups. To connect, use :func:`resolve_url_allowed` (or
    :mod:`recotem.lib.safehttp`) so the connection goes to the address checked here.
    """
    resolve_url_allowed(url, allowed_hosts=allowed_hosts, forbidden_hosts=forbidden_hosts)


def resolve_url_allowed(
    url: str,
    *,
    allowed_hosts: Iterable[str],
    forbidden_hosts: Iterable[tuple[str, int | None]] = (),
) -> CheckedUrl:
    """Check ``url`` like :func:`check_url_allowed` and return the addresses to connect to.

    The host is resolved once; every address is checked (a host listed by name is trusted
    whatever it resolves to, but is still resolved here). Connect only to these addresses:
    resolving again would let a DNS server answer differently (rebinding).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        raise UrlNotAllowed(f"Only http and https URLs are allowed, not '{scheme or url}'.")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise UrlNotAllowed("The URL has an invalid port.") from exc
    host = _normalize_host(parts.hostname or "")
    allow = _AllowList.parse(allowed_hosts)
    forbidden = [(_normalize_host(h), p) for h, p in forbidden_hosts]
    for f_host, f_port in forbidden:
        if f_host == host and f_port in (None, port):
            raise UrlNotAllowed(f"The URL points at {host}:{port}, which Recotem itself uses.")
    addresses = _check_host(host, port, allow, what="URL")
    if not addresses:  # listed by name: trusted, but connect to what it resolves to now
        try:
            addresses = _resolve(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise UrlNotAllowed(f"Cannot resolve host '{host}' of the URL.") from exc
        if not addresses:
            raise UrlNotAllowed(f"Cannot resolve host '{host}' of the URL.")
    for f_host, f_port in forbidden:
        if f_port not in (None, port):
            continue
        try:
            f_ip = ipaddress.ip_address(f_host)
        except ValueError:
            continue
        if f_ip in addresses:
            raise UrlNotAllowed(f"The URL points at {f_ip}:{port}, which Recotem itself uses.")
    unique = tuple(dict.fromkeys(addresses))
    return CheckedUrl(url=url.strip(), scheme=scheme, host=host, port=port, addresses=unique)


def check_sqlalchemy_url_allowed(
    url: str,
    *,
    allowed_hosts: Iterable[str],
    own_database: Mapping[str, Any],
    allow_own_server: bool = False,
) -> None:
    """Raise :class:`UrlNotAllowed` unless a SQLAlchemy source URL may be opened.

    ``allow_own_server=True`` is an administrator's explicit choice for deployments whose
    shop data lives in another database on the same server (give that source its own
    SELECT-only role): then only Recotem's own database name on that server is refused.

    ``own_database`` is Recotem's database in Django's ``DATABASES["default"]``
    shape (``ENGINE``, ``NAME``, ``HOST``, ``PORT``; lower-case keys work too).

    Steps: parse with SQLAlchemy's ``make_url``; allow only postgresql, mysql,
    mariadb and sqlite dialects and the query options in ``_SAFE_DB_QUERY_KEYS``;
    for SQLite require an absolute file path under a ``sqlite:/path`` allow
    entry that is not Recotem's own database file; for servers apply the host policy, then
    refuse any database on the server Recotem's own database runs on
    (:func:`is_same_database_server`: same port, same machine by resolved address), since a
    source there could read ``/postgres``, ``/template1`` or Recotem's own tables under another
    name. Side effect: DNS look-ups.
    """
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise UrlNotAllowed("Not a valid SQLAlchemy database URL.") from exc
    dialect = parsed.get_backend_name()
    unsafe = sorted(set(parsed.query) - _SAFE_DB_QUERY_KEYS)
    if unsafe:
        raise UrlNotAllowed(f"Database URL option(s) not allowed: {', '.join(unsafe)}.")
    allow = _AllowList.parse(allowed_hosts)
    own = {str(k).upper(): v for k, v in own_database.items()}
    if dialect == "sqlite":
        _check_sqlite(parsed, allow, own)
        return
    if dialect not in ("postgresql", "mysql", "mariadb"):
        raise UrlNotAllowed(
            f"Database type '{dialect}' is not supported; use postgresql, mysql or sqlite."
        )
    host = _normalize_host(parsed.host or "")
    if not host:
        # libpq/MySQL fall back to a local Unix socket, i.e. this machine.
        raise UrlNotAllowed("The database URL must name a host (local sockets are not allowed).")
    port = parsed.port or _DEFAULT_PORTS[dialect]
    _check_host(host, port, allow, what="database URL")
    same_server = is_same_database_server(
        url,
        own_engine=str(own.get("ENGINE", "")),
        own_host=own.get("HOST"),
        own_port=own.get("PORT"),
    )
    if same_server and allow_own_server:
        if (parsed.database or "") == str(own.get("NAME", "")):
            raise UrlNotAllowed(
                "The URL points at Recotem's own database; use a separate database."
            )
    elif same_server:
        raise UrlNotAllowed(
            "The URL points at the server of Recotem's own database (any database on it "
            "counts); use a separate database server."
        )


def _check_sqlite(parsed: URL, allow: _AllowList, own: Mapping[str, Any]) -> None:
    path = parsed.database or ""
    if path in ("", ":memory:"):
        raise UrlNotAllowed("An in-memory SQLite database has no data to read.")
    if not os.path.isabs(path):
        raise UrlNotAllowed("A SQLite path must be absolute (sqlite:////abs/path.db).")
    real = os.path.realpath(path)
    own_engine = str(own.get("ENGINE", ""))
    own_name = str(own.get("NAME", ""))
    if "sqlite" in own_engine and own_name and os.path.realpath(own_name) == real:
        raise UrlNotAllowed("The URL points at Recotem's own database; use a separate database.")
    for allowed in allow.sqlite_paths:
        if real == allowed or real.startswith(allowed.rstrip(os.sep) + os.sep):
            return
    raise UrlNotAllowed(
        f"SQLite file {real} is on Recotem's own machine; add 'sqlite:<directory>' to {SETTING} "
        "to allow it."
    )


def _own_dialect(engine: str) -> str | None:
    engine = engine.lower()
    for dialect, markers in (("postgresql", ("postgres",)), ("mysql", ("mysql", "mariadb"))):
        if any(marker in engine for marker in markers):
            return dialect
    return None


def is_same_database_server(
    source_url: str,
    *,
    own_engine: str,
    own_host: str | None,
    own_port: int | str | None,
) -> bool:
    """Whether a server URL reaches the same database server as Recotem's own, any database.

    ``own_engine`` is e.g. Django's ``django.db.backends.postgresql``; ``own_host`` and
    ``own_port`` are the own database's settings (empty host or a directory path means a
    Unix socket, i.e. this machine). Same server means the same port on the same machine:
    loopback and unspecified addresses and every address assigned to this machine are one
    machine, other hosts are compared by their resolved addresses. A SQLite own database has
    no server (False). When a name cannot be resolved the answer is True: refusing is the safe
    side. Side effect: DNS look-ups.
    """
    own_family = _own_dialect(own_engine)
    if own_family is None:
        return False
    try:
        parsed = make_url(source_url.strip())
    except (ArgumentError, ValueError):
        return False
    dialect = parsed.get_backend_name()
    if dialect not in _DEFAULT_PORTS:
        return False
    port = parsed.port or _DEFAULT_PORTS[dialect]
    try:
        own_port_number = int(own_port or _DEFAULT_PORTS[own_family])
    except ValueError:
        return True
    if port != own_port_number:
        return False
    return _same_machine(parsed.host or "", own_host or "", port)


def _same_machine(host: str, other: str, port: int) -> bool:
    a, b = _normalize_host(host), _normalize_host(other)
    if a == b:
        return True
    try:
        a_addresses = _machine_addresses(a, port)
        b_addresses = _machine_addresses(b, port)
    except (OSError, UnicodeError, ValueError):
        return True
    if _is_local(a_addresses) and _is_local(b_addresses):
        return True
    return bool(set(a_addresses) & set(b_addresses))


def _machine_addresses(host: str, port: int) -> list[IPAddress]:
    # Django's empty HOST (and libpq's socket directory) is the local Unix socket.
    if not host or host.startswith("/"):
        return [ipaddress.ip_address("127.0.0.1")]
    return _resolve(host, port)


def _is_local(addresses: list[IPAddress]) -> bool:
    return bool(addresses) and all(_is_this_machine(ip) for ip in addresses)


def _is_this_machine(ip: IPAddress) -> bool:
    """Loopback, unspecified, or assigned to one of this machine's interfaces."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    # Binding succeeds only to a local address (EADDRNOTAVAIL otherwise); nothing is sent.
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True
