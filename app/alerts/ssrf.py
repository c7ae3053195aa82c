"""Outbound target checks for webhook and Discord deliveries (server-side request forgery guard).

A target must be ``http(s)``; every address its host resolves to must be global (after unwrapping
IPv4-mapped, NAT64, 6to4 and Teredo forms) and not multicast; cloud metadata names are refused by
name. The delivery then connects to the address that was checked (no second lookup: a DNS answer
cannot change between check and use), with the original host in ``Host`` and TLS SNI. Hosts named
in ``CSH_WEBHOOK_ALLOW`` (a self-hoster's own receivers, the tests' local ones) skip the address
rule but not the scheme rule."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = ["Target", "TargetRefusedError", "check_target"]

_METADATA_NAMES = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Refused whatever ``is_global`` says (it lags behind the registries on some Python versions).
_DENY = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4", "255.255.255.255/32",
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "3fff::/20", "5f00::/16", "fec0::/10",
    )
)  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefusedError(ValueError):
    """A delivery target the guard does not allow, with the reason."""


@dataclass(frozen=True)
class Target:
    """A checked target: the URL as given, and the address to connect to."""

    url: SplitResult
    host: str
    address: str
    port: int

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return self.url._replace(netloc=f"{host}:{self.port}").geturl()


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """``ip`` and any IPv4 address it carries (mapped, NAT64, 6to4, Teredo)."""
    out: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip in _NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
    return out


def _allowed_address(ip: IPAddress) -> bool:
    return all(a.is_global and not a.is_multicast and not any(a in net for net in _DENY if net.version == a.version) for a in _embedded(ip))


def check_target(url: str, allow: frozenset[str] = frozenset(), resolve: bool = True) -> Target:
    """The checked :class:`Target` of ``url``; raises :class:`TargetRefusedError` naming the rule broken."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  # parsing the port raises on a bad one
    except ValueError as err:
        raise TargetRefusedError(f"the target is not a valid URL: {err}") from err
    if len(url) > 2048 or any(ord(c) < 33 for c in url.strip()):
        raise TargetRefusedError("the target URL is too long or holds spaces or control characters")
    if parts.scheme not in ("http", "https"):
        raise TargetRefusedError("the target must be an http or https URL")
    try:
        host = (parts.hostname or "").rstrip(".").lower().encode("idna").decode("ascii")
    except UnicodeError as err:
        raise TargetRefusedError(f"the target host is not a valid name: {err}") from err
    if not host:
        raise TargetRefusedError("the target URL has no host")
    if parts.username or parts.password:
        raise TargetRefusedError("the target URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise TargetRefusedError(f"the target URL has a bad port: {err}") from err
    if host in _METADATA_NAMES:
        raise TargetRefusedError(f"{host} is a cloud metadata service")
    trusted = host in {a.lower().rstrip(".") for a in allow}
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM) if resolve else []
    except (socket.gaierror, UnicodeError) as err:
        raise TargetRefusedError(f"{host} does not resolve: {err}") from err
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise TargetRefusedError(f"{host} has no address")
    if not trusted:
        bad = [str(a) for a in addresses if not _allowed_address(a)]
        if bad:
            raise TargetRefusedError(f"{host} resolves to a non-public address ({', '.join(bad)}); list trusted hosts in CSH_WEBHOOK_ALLOW")
    return Target(parts, host, str(addresses[0]), port)
