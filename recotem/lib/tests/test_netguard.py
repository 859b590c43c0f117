from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

import pytest

from recotem.lib import netguard
from recotem.lib.netguard import (
    UrlNotAllowed,
    check_sqlalchemy_url_allowed,
    check_url_allowed,
    is_same_database_server,
    parse_allowed_hosts,
)

FAKE_DNS = {
    "example.com": ["93.184.215.14"],
    "db.internal": ["10.1.2.3"],
    "sneaky.example": ["93.184.215.14", "192.168.1.10"],
    "rebind.example": ["169.254.169.254"],
    "pg.example": ["203.0.113.50"],
    "own-db.example": ["93.184.215.99"],
    "alias-of-own.example": ["93.184.215.99"],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = netguard._resolve

    def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        if host in FAKE_DNS:
            return [ipaddress.ip_address(a) for a in FAKE_DNS[host]]
        if host.endswith((".example", ".com", ".internal")):
            raise OSError("name does not resolve")
        return real(host, port)  # IP literals and localhost resolve offline

    monkeypatch.setattr(netguard, "_resolve", resolve)


def _refusal(url: str, allowed: list[str], **kwargs: object) -> str:
    with pytest.raises(UrlNotAllowed) as info:
        check_url_allowed(url, allowed_hosts=allowed, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_it_refuses_loopback_even_with_wildcard() -> None:
    message = _refusal("http://127.0.0.1:8000/api", ["*"])
    assert "127.0.0.1, a loopback address" in message
    assert "RECOTEM_ALLOWED_SOURCE_HOSTS" in message
    assert "loopback" in _refusal("http://localhost/", ["*"])
    assert "loopback" in _refusal("http://[::1]/", ["*"])
    assert "loopback" in _refusal("http://[::ffff:127.0.0.1]/", ["*"])


def test_it_refuses_numeric_tricks_for_loopback() -> None:
    assert "loopback" in _refusal("http://2130706433/", ["*"])
    assert "loopback" in _refusal("http://0x7f.1/", ["*"])


def test_it_refuses_metadata_private_and_unspecified_addresses() -> None:
    assert "link-local" in _refusal("http://169.254.169.254/latest/meta-data", ["*"])
    assert "link-local" in _refusal("http://rebind.example/", ["*"])
    assert "private" in _refusal("http://192.168.0.1/", ["*"])
    assert "unspecified" in _refusal("http://0.0.0.0/", ["*"])
    assert "multicast" in _refusal("http://224.0.0.1/", ["*"])
    assert "non-public" in _refusal("http://100.64.0.1/", ["*"])


def test_it_refuses_a_name_with_any_private_record() -> None:
    assert "192.168.1.10, a private address" in _refusal("https://sneaky.example/", ["*"])


def test_it_allows_listed_loopback() -> None:
    check_url_allowed("http://127.0.0.1:8080/data.csv", allowed_hosts=["127.0.0.1"])
    check_url_allowed("http://localhost:8080/data.csv", allowed_hosts=["localhost"])


def test_it_allows_private_hosts_via_cidr_or_name() -> None:
    check_url_allowed("http://10.9.8.7/x.csv", allowed_hosts=["10.0.0.0/8"])
    check_url_allowed("http://db.internal/x.csv", allowed_hosts=["DB.Internal."])
    check_url_allowed("http://db.internal/x.csv", allowed_hosts=["10.1.0.0/16"])
    assert "private" in _refusal("http://10.9.8.7/x.csv", ["192.168.0.0/16", "*"])


def test_it_allows_public_hosts_only_with_wildcard_or_listing() -> None:
    check_url_allowed("https://example.com/hook", allowed_hosts=["*"])
    check_url_allowed("https://example.com/hook", allowed_hosts=["example.com"])
    assert "not in RECOTEM_ALLOWED_SOURCE_HOSTS" in _refusal("https://example.com/", [])
    assert "not in RECOTEM_ALLOWED_SOURCE_HOSTS" in _refusal("https://example.com/", ["a.org"])


def test_it_refuses_other_schemes_bad_ports_and_unknown_hosts() -> None:
    assert "Only http and https" in _refusal("file:///etc/passwd", ["*"])
    assert "Only http and https" in _refusal("gopher://example.com/", ["*"])
    assert "invalid port" in _refusal("http://example.com:99999/", ["*"])
    assert "no host" in _refusal("http:///path", ["*"])
    assert "Cannot resolve" in _refusal("http://nowhere.example/", ["*"])


def test_it_refuses_forbidden_hosts() -> None:
    forbidden = [("recotem.example.com", 443), ("93.184.215.14", None)]
    assert "Recotem itself uses" in _refusal(
        "https://recotem.example.com/api/", ["*"], forbidden_hosts=forbidden
    )
    assert "Recotem itself uses" in _refusal(
        "https://example.com/", ["*"], forbidden_hosts=forbidden
    )
    check_url_allowed(
        "https://example.com/",
        allowed_hosts=["*"],
        forbidden_hosts=[("example.com", 8443)],
    )


def test_it_parses_the_setting() -> None:
    assert parse_allowed_hosts(" 127.0.0.1, db.internal 10.0.0.0/8,,") == [
        "127.0.0.1",
        "db.internal",
        "10.0.0.0/8",
    ]


OWN_PG = {"ENGINE": "django.db.backends.postgresql", "NAME": "recotem", "HOST": "own-db.example"}


def _db_refusal(url: str, allowed: list[str], own: Mapping[str, object] = OWN_PG) -> str:
    with pytest.raises(UrlNotAllowed) as info:
        check_sqlalchemy_url_allowed(url, allowed_hosts=allowed, own_database=own)
    return str(info.value)


def test_it_allows_listed_database_servers() -> None:
    check_sqlalchemy_url_allowed(
        "postgresql+psycopg://u:p%40ss@pg.example:5432/shop?sslmode=require",
        allowed_hosts=["pg.example"],
        own_database=OWN_PG,
    )
    check_sqlalchemy_url_allowed(
        "mysql+pymysql://u:p@db.internal/shop", allowed_hosts=["10.0.0.0/8"], own_database=OWN_PG
    )


def test_it_refuses_own_database() -> None:
    assert "own database" in _db_refusal("postgresql://u:p@own-db.example/recotem", ["*"])
    assert "own database" in _db_refusal(
        "postgresql://u:p@alias-of-own.example:5432/recotem", ["*"]
    )
    own_local = {"ENGINE": "django.db.backends.postgresql", "NAME": "recotem", "HOST": ""}
    assert "own database" in _db_refusal(
        "postgresql://u:p@localhost/recotem", ["localhost"], own_local
    )
    # Same server, other database: refused too. (This test used to allow it; but any
    # database on Recotem's server, /postgres or /template1 included, is reachable with the
    # same credentials and shares the server's roles and files.)
    for name in ("shop", "postgres", "template1", ""):
        assert "own database" in _db_refusal(f"postgresql://u:p@own-db.example/{name}", ["*"])
    # Unless an administrator allows the own server explicitly: then only the own name.
    check_sqlalchemy_url_allowed(
        "postgresql://u:p@own-db.example/shop",
        allowed_hosts=["*"],
        own_database=OWN_PG,
        allow_own_server=True,
    )
    with pytest.raises(UrlNotAllowed, match="own database"):
        check_sqlalchemy_url_allowed(
            "postgresql://u:p@alias-of-own.example/recotem",
            allowed_hosts=["*"],
            own_database=OWN_PG,
            allow_own_server=True,
        )
    # Another port on the same host is another server.
    check_sqlalchemy_url_allowed(
        "postgresql://u:p@own-db.example:5433/recotem", allowed_hosts=["*"], own_database=OWN_PG
    )


def test_it_treats_loopback_names_sockets_and_local_addresses_as_one_machine() -> None:
    pg = "django.db.backends.postgresql"
    for own_host in ("", "localhost", "127.0.0.1", "::1", "/var/run/postgresql", "0.0.0.0"):
        for source_host in ("localhost", "127.0.0.1", "[::1]", "127.0.0.2", "0.0.0.0"):
            assert is_same_database_server(
                f"postgresql://u@{source_host}:5432/other",
                own_engine=pg,
                own_host=own_host,
                own_port="",
            ), (own_host, source_host)
    assert not is_same_database_server(
        "postgresql://u@127.0.0.1:5433/x", own_engine=pg, own_host="", own_port=5432
    )
    assert not is_same_database_server(
        "postgresql://u@pg.example/x", own_engine=pg, own_host="localhost", own_port=None
    )
    # MySQL default port 3306 vs PostgreSQL's own 5432: different servers.
    assert not is_same_database_server(
        "mysql://u@127.0.0.1/x", own_engine=pg, own_host="127.0.0.1", own_port=None
    )
    assert is_same_database_server(
        "mariadb://u@localhost/x",
        own_engine="django.db.backends.mysql",
        own_host="127.0.0.1",
        own_port="3306",
    )
    # A SQLite own database has no server; an unresolvable own host counts as the same.
    assert not is_same_database_server(
        "postgresql://u@127.0.0.1/x",
        own_engine="django.db.backends.sqlite3",
        own_host="",
        own_port="",
    )
    assert is_same_database_server(
        "postgresql://u@pg.example/x", own_engine=pg, own_host="gone.example", own_port=""
    )


def test_it_counts_this_machines_own_interface_address_as_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = _non_loopback_local_address()
    if local is None:
        pytest.skip("this machine has no non-loopback address")
    FAKE_DNS["me.internal"] = [local]
    try:
        assert is_same_database_server(
            "postgresql://u@me.internal/other",
            own_engine="django.db.backends.postgresql",
            own_host="",
            own_port="",
        )
        assert "own database" in _db_refusal(
            f"postgresql://u@{local}/other",
            [local],
            {"ENGINE": "django.db.backends.postgresql", "NAME": "recotem", "HOST": ""},
        )
    finally:
        del FAKE_DNS["me.internal"]


def _non_loopback_local_address() -> str | None:
    import socket

    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    try:
        with open("/proc/net/fib_trie") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for previous, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            address = previous.split()[-1]
            if not ipaddress.ip_address(address).is_loopback:
                return address
    return None


def test_it_refuses_unlisted_private_database_hosts() -> None:
    assert "loopback" in _db_refusal("postgresql://u:p@127.0.0.1/shop", ["*"])
    assert "private" in _db_refusal("mysql://u:p@db.internal/shop", ["*"])
    assert "must name a host" in _db_refusal("postgresql:///shop", ["*"])


def test_it_refuses_connection_redirecting_options_and_other_dialects() -> None:
    assert "host" in _db_refusal("postgresql://u:p@pg.example/shop?host=/var/run", ["*"])
    assert "read_default_file" in _db_refusal(
        "mysql://u:p@pg.example/shop?read_default_file=/etc/passwd", ["*"]
    )
    assert "not supported" in _db_refusal("mssql+pyodbc://u:p@pg.example/shop", ["*"])
    assert "not a valid" in _db_refusal("not a url", ["*"]).lower()


def test_it_refuses_sqlite_unless_its_directory_is_listed(tmp_path: Path) -> None:
    source = tmp_path / "sources" / "shop.sqlite3"
    source.parent.mkdir()
    source.touch()
    url = f"sqlite:///{source}"
    assert "add 'sqlite:<directory>'" in _db_refusal(url, ["*", "127.0.0.1"])
    check_sqlalchemy_url_allowed(
        url, allowed_hosts=[f"sqlite:{source.parent}"], own_database=OWN_PG
    )
    check_sqlalchemy_url_allowed(url, allowed_hosts=[f"sqlite:{source}"], own_database=OWN_PG)
    # A sibling directory sharing the prefix is not inside the listed one.
    assert "add 'sqlite" in _db_refusal(
        f"sqlite:///{tmp_path}/sources2/x.db", [f"sqlite:{source.parent}"]
    )
    assert "absolute" in _db_refusal("sqlite:///relative.db", [f"sqlite:{tmp_path}"])
    assert "in-memory" in _db_refusal("sqlite://", [f"sqlite:{tmp_path}"])


def test_it_refuses_own_sqlite_file_even_when_listed(tmp_path: Path) -> None:
    own_file = tmp_path / "db.sqlite3"
    own_file.touch()
    (tmp_path / "link.sqlite3").symlink_to(own_file)
    own = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(own_file)}
    for name in ("db.sqlite3", "link.sqlite3"):
        assert "own database" in _db_refusal(
            f"sqlite:///{tmp_path / name}", [f"sqlite:{tmp_path}"], own
        )
