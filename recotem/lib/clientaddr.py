"""Which address a request came from, when proxies may stand in between.

The socket's peer address is the only one nobody can forge. A forwarding header
(``X-Forwarded-For: client, proxy1, proxy2``) is believed only as far as the operator says the
proxies in front are trusted (``RECOTEM_TRUSTED_PROXIES``):

* empty: the header is ignored, the client is the peer;
* a count ``N``: the N proxies nearest to us each appended the address they saw, so the client
  is the N-th entry from the right of ``header + [peer]``;
* CIDRs (``10.0.0.0/8,192.168.1.5``): walking from the peer leftwards, every hop inside them is
  a proxy; the first hop outside them is the client.

Anything a client wrote to the left of what the trusted proxies appended is never read, so
rotating ``X-Forwarded-For`` on each request changes nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = ["TrustedProxies", "client_address", "parse_trusted_proxies"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HOPS: Final = 32  # a longer chain is treated as garbage beyond this many hops


@dataclass(frozen=True)
class TrustedProxies:
    """``count`` proxies, or the ``networks`` proxies sit in; neither means none."""

    count: int = 0
    networks: tuple[IPNetwork, ...] = ()


def parse_trusted_proxies(value: str) -> TrustedProxies:
    """``""`` → none, ``"2"`` → two proxies, ``"10.0.0.0/8,::1"`` → those networks.

    Raises ValueError with a message naming the setting for anything else.
    """
    text = value.strip()
    if not text:
        return TrustedProxies()
    if text.isdigit():
        count = int(text)
        if count > _MAX_HOPS:
            raise ValueError(f"RECOTEM_TRUSTED_PROXIES: at most {_MAX_HOPS} proxies, got {count}.")
        return TrustedProxies(count=count)
    networks: list[IPNetwork] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"RECOTEM_TRUSTED_PROXIES must be a number of proxies or comma-separated "
                f"addresses/CIDRs; {item!r} is neither."
            ) from None
    return TrustedProxies(networks=tuple(networks))


def _normalize(value: str) -> str | None:
    text = value.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The client's address as a string (``""`` when even the peer is unknown)."""
    peer_ip = _normalize(peer or "") or (peer or "")
    if not forwarded_for or (trusted.count == 0 and not trusted.networks):
        return peer_ip
    hops = forwarded_for.split(",")[-_MAX_HOPS:]
    chain = [*hops, peer_ip]
    if trusted.count:
        index = max(0, len(chain) - 1 - trusted.count)
        return _normalize(chain[index]) or peer_ip
    # CIDR mode: skip trusted hops from the right; an unparsable hop ends the walk there.
    current = peer_ip
    for hop in reversed(hops):
        if not _in_networks(current, trusted.networks):
            return current
        parsed = _normalize(hop)
        if parsed is None:
            return current
        current = parsed
    return current


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)
