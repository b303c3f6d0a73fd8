"""How much of the address space a set of security-rule sources admits, judged by coverage, not by spelling.

`0.0.0.0/1` plus `128.0.0.0/1` is the whole Internet although neither string is `0.0.0.0/0`; the union of
the networks is what counts. Pure Python (ipaddress), shared by the policy rules and the offline preview.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from math import log2

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Azure service tags that mean "any address"; matched case-insensitively, as Azure does.
ANY_TAGS = frozenset({"*", "internet", "any"})
# Service tags that only ever name addresses inside Azure's own fabric or the VNet: safe as sources.
PRIVATE_TAGS = frozenset({"virtualnetwork", "azureloadbalancer"})
ADDRESS_BITS = {4: 32, 6: 128}
# Blocks no Internet host can send from (private, shared CGN, loopback, link-local): a VNet peer's 10.0.0.0/8 is
# not "the Internet", so coverage counts only the rest of each family.
NON_GLOBAL: dict[int, tuple[IpNetwork, ...]] = {
    4: tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                 "127.0.0.0/8", "169.254.0.0/16")),
    6: tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10", "::1/128")),
}


@dataclass(frozen=True)
class Coverage:
    """The share (0..1) of each address family a source set admits, and what could not be read."""

    share: dict[int, float]  # of the family's globally routed addresses
    covered: dict[int, int]  # globally routed addresses admitted
    any_tag: str | None
    unreadable: tuple[str, ...]

    def broadest_prefix(self, version: int) -> float:
        """The union expressed as the prefix length of one network of the same size (0 = the whole family)."""
        share = self.share.get(version, 0.0)
        if share <= 0:
            return float(ADDRESS_BITS[version])
        return -log2(share)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); host names other than localhost are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_source(source: str) -> IpNetwork | None:
    """A CIDR, a bare address or an address/netmask pair; None for a service tag or garbage."""
    text = str(source).strip()
    if text == "0.0.0.0":
        # Azure reads a bare 0.0.0.0 source as "any address"; ipaddress would read a single host.
        return ipaddress.ip_network("0.0.0.0/0")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def coverage(sources: Iterable[str]) -> Coverage:
    """Collapse the sources per family and measure the union."""
    nets: dict[int, list[IpNetwork]] = {4: [], 6: []}
    any_tag: str | None = None
    unreadable: list[str] = []
    for source in sources:
        net = parse_source(source)
        if net is not None:
            nets[net.version].append(net)
            continue
        tag = str(source).strip().lower()
        if tag in ANY_TAGS:
            any_tag = any_tag or str(source)
        elif tag not in PRIVATE_TAGS:
            # An unknown service tag (AzureCloud, Storage, ...) names addresses anyone can rent: fail closed.
            unreadable.append(str(source))
    share: dict[int, float] = {}
    counted: dict[int, int] = {}
    for version, found in nets.items():
        # collapse_addresses merges overlaps, so a network listed twice is counted once.
        collapsed = list(ipaddress.collapse_addresses(found))  # type: ignore[type-var]
        # CIDR blocks are nested or disjoint, so each overlap is the smaller block.
        private = sum(min(n.num_addresses, b.num_addresses) for n in collapsed for b in NON_GLOBAL[version]
                      if n.overlaps(b))  # type: ignore[arg-type]
        covered = sum(n.num_addresses for n in collapsed) - private
        space = 2 ** ADDRESS_BITS[version] - sum(b.num_addresses for b in NON_GLOBAL[version])
        share[version] = covered / space
        counted[version] = covered
    return Coverage(share, counted, any_tag, tuple(unreadable))


def too_broad(sources: Iterable[str], broadest: tuple[int, int]) -> str | None:
    """Why the sources admit more than one /broadest[0] (IPv4) or /broadest[1] (IPv6) network, or None."""
    cov = coverage(sources)
    if cov.any_tag is not None:
        return f"source {cov.any_tag} admits any address"
    if cov.unreadable:
        return f"source {cov.unreadable[0]} is not a CIDR or a VNet-only service tag"
    for version, limit in zip((4, 6), broadest, strict=True):
        share = cov.share.get(version, 0.0)
        if share >= 1.0:
            return f"sources cover the whole IPv{version} Internet (a /0 in effect)"
        # Compared in addresses, not as a share: one public /8 is exactly as broad as a /8 allows.
        if cov.covered.get(version, 0) > 2 ** (ADDRESS_BITS[version] - limit):
            return (f"sources cover {share:.3%} of the IPv{version} space, more than one /{limit} network "
                    f"(as broad as a /{cov.broadest_prefix(version):.1f})")
    return None
