"""The live DNS look-ups of the sending-domain checks (domains.Lookup), through dnspython's resolver."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from services.campaigns.domains import LookupFailed
from services.common.nameserver import nameserver_resolver


class DnsLookup:
    """Asks CAMPAIGNS_DNS_RESOLVER (or the system's resolver), with no cache: a check wants what DNS says now."""

    def __init__(self, nameserver: str = "", timeout: float = 5.0) -> None:
        self._resolver: dns.asyncresolver.Resolver = nameserver_resolver(nameserver)
        self._resolver.cache = None
        self._timeout = timeout

    async def _answer(self, name: str, rtype: str) -> dns.resolver.Answer | None:
        try:
            return await self._resolver.resolve(name, rtype, lifetime=self._timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout:
            raise LookupFailed("DNS did not answer for %(name)s in time; try the check again", name=name) from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(
                "DNS could not look %(name)s up (%(reason)s); try the check again", name=name, reason=type(exc).__name__
            ) from None

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name`, each one's strings joined."""
        answer = await self._answer(name, "TXT")
        if answer is None:
            return []
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def cname(self, name: str) -> str | None:
        """The CNAME target at `name`, without the final dot."""
        answer = await self._answer(name, "CNAME")
        if answer is None:
            return None
        return str(answer[0].target).rstrip(".")
