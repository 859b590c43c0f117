from __future__ import annotations

import pytest

from recotem.lib.clientaddr import TrustedProxies, client_address, parse_trusted_proxies


def test_it_ignores_forwarding_headers_without_trusted_proxies() -> None:
    none = parse_trusted_proxies("")
    assert client_address("127.0.0.1", "203.0.113.9", none) == "127.0.0.1"
    assert client_address("127.0.0.1", None, none) == "127.0.0.1"


def test_it_takes_the_address_the_nearest_proxies_appended() -> None:
    one = parse_trusted_proxies("1")
    # The client wrote "6.6.6.6" itself; the proxy appended the real address.
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.4", one) == "198.51.100.4"
    two = parse_trusted_proxies("2")
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.4, 10.0.0.1", two) == "198.51.100.4"
    # Fewer hops than proxies: the leftmost is all there is.
    assert client_address("10.0.0.2", "198.51.100.4", two) == "198.51.100.4"


def test_it_walks_trusted_networks_from_the_right() -> None:
    cidrs = parse_trusted_proxies("10.0.0.0/8, 192.168.1.5")
    assert client_address("192.168.1.5", "6.6.6.6, 198.51.100.4, 10.1.2.3", cidrs) == "198.51.100.4"
    # A peer outside the trusted networks is the client, whatever it forwards.
    assert client_address("203.0.113.1", "198.51.100.4", cidrs) == "203.0.113.1"
    # Garbage in the header ends the walk at the last trusted hop.
    assert client_address("10.0.0.1", "not-an-ip", cidrs) == "10.0.0.1"


def test_it_normalizes_ports_and_brackets() -> None:
    one = TrustedProxies(count=1)
    assert client_address("10.0.0.1", "198.51.100.4:5555", one) == "198.51.100.4"
    assert client_address("10.0.0.1", "[2001:db8::1]:443", one) == "2001:db8::1"
    assert client_address("10.0.0.1", "2001:db8::2", one) == "2001:db8::2"


def test_it_falls_back_to_the_peer_for_an_unparsable_forwarded_address() -> None:
    assert client_address("10.0.0.1", "junk", TrustedProxies(count=1)) == "10.0.0.1"


@pytest.mark.parametrize("value", ["abc", "10.0.0.0/33", "999"])
def test_it_rejects_bad_settings_with_a_message(value: str) -> None:
    with pytest.raises(ValueError, match="RECOTEM_TRUSTED_PROXIES"):
        parse_trusted_proxies(value)
