"""The nameserver a service asks (campaigns' DNS checks, the sender's MX look-ups): one address, any port."""

from __future__ import annotations

import ipaddress

import dns.asyncresolver


def nameserver_address(text: str) -> tuple[str, int]:
    """The address and port of a nameserver given as host:port, [v6]:port or a bare address (port 53)."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not a nameserver address: give IP:port, e.g. 127.0.0.1:53") from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r} has no valid port: give IP:port, e.g. 127.0.0.1:53")
    return host, number


def nameserver_resolver(nameserver: str = "") -> dns.asyncresolver.Resolver:
    """A resolver asking the given nameserver (host:port) only; empty: the system's (/etc/resolv.conf)."""
    if not nameserver:
        return dns.asyncresolver.Resolver()
    host, port = nameserver_address(nameserver)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    return resolver
