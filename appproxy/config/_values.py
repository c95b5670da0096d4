"""
Values that are checked beyond their TOML type: base URLs, https URLs, DNS
names, host names or addresses (with or without a port) and IP networks.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from appproxy.config._messages import quote
from appproxy.config._table import Table
from appproxy.config.model import DEFAULT_PORTS
from appproxy.http.authority import parse_authority

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Host names in URLs: a little looser than DNS (underscores occur in internal names).
_URL_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_PORT = re.compile(r"[0-9]{1,5}")
_INVALID_PORT = "has an invalid port (must be from 1 to 65535)"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _is_port(text: str) -> bool:
    return bool(_PORT.fullmatch(text)) and 1 <= int(text) <= 65535


def _is_dns_name(value: str) -> bool:
    """Whether C{value} is a lowercase DNS name (ASCII, no trailing dot)."""
    return len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in value.split("."))


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ipv6_address(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return "%" not in value


def _split(table: Table, name: str, value: str, invalid: str) -> SplitResult:
    """C{value} split into a URL's parts, refused if it holds a user name or password."""
    try:
        parts = urlsplit(value)
    except ValueError:
        table.fail(name, invalid)
    if "@" in parts.netloc:
        # Not echoed: it may hold a password.
        table.fail(name, "must not contain a user name or password")
    return parts


def base_url(table: Table, name: str, *, external: bool) -> str:
    """
    An external (https) or internal (http or https) base URL, normalised:
    lowercase scheme and host, default port elided, path ending in C{/}.
    """
    value = table.string(name)
    if any(char.isspace() or not char.isprintable() for char in value):
        table.fail(name, "must not contain whitespace or control characters")
    if not value.isascii():
        table.fail(
            name,
            "must contain only ASCII characters (write international host names"
            " in their xn-- form and percent-encode paths)",
        )
    parts = _split(table, name, value, "is not a valid URL")
    shown = quote(value)
    schemes: tuple[str, ...] = ("https",) if external else ("http", "https")
    if parts.scheme not in schemes:
        kind = "an https" if external else "an http or https"
        table.fail(name, f"{shown} is not {kind} URL")
    if "?" in value:
        table.fail(name, f"{shown} must not have a query ('?...')")
    if "#" in value:
        table.fail(name, f"{shown} must not have a fragment ('#...')")
    if not parts.netloc:
        table.fail(name, f"{shown} has no host name")

    if parts.netloc.startswith("["):
        host_text, _, port_part = parts.netloc[1:].partition("]")
        if not _is_ipv6_address(host_text):
            table.fail(name, f"{shown} has an invalid IPv6 address")
        host = f"[{ipaddress.IPv6Address(host_text).compressed}]"
    else:
        host_text, colon, port_text = parts.netloc.partition(":")
        port_part = colon + port_text
        host = host_text.lower()
        if not host:
            table.fail(name, f"{shown} has no host name")
        # The front end parses published hosts with the one authority parser:
        # what it would refuse (a label over 63 characters, a name over 253) is
        # refused here, at load, not when the apps are published.
        if not _URL_HOST.fullmatch(host) or parse_authority(host) is None:
            table.fail(name, f"{shown} has an invalid host name")
    port: int | None = None
    if port_part:
        if not port_part.startswith(":") or not _is_port(port_part[1:]):
            table.fail(name, f"{shown} {_INVALID_PORT}")
        port = int(port_part[1:])

    path = parts.path or "/"
    if not path.endswith("/"):
        table.fail(name, f"{shown} must end with '/' (its path is a prefix)")
    if any(segment in (".", "..") for segment in path.split("/")):
        table.fail(name, f"{shown} must not contain '.' or '..' path segments")

    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}{path}"


def https_url(table: Table, name: str, *, path: bool) -> str:
    """An https URL without query, fragment or userinfo; lowercase host."""
    value = table.string(name)
    if any(char.isspace() or not char.isprintable() for char in value) or not value.isascii():
        table.fail(name, "must be an ASCII URL without whitespace or control characters")
    shown = quote(value)
    parts = _split(table, name, value, f"{shown} is not a valid URL")
    if parts.scheme != "https":
        table.fail(name, f"{shown} is not an https URL")
    if not parts.hostname:
        table.fail(name, f"{shown} has no host name")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        table.fail(name, f"{shown} must not have a query or fragment")
    host = parts.hostname.lower()
    if not (_is_ipv6_address(host) if ":" in host else _URL_HOST.fullmatch(host)):
        table.fail(name, f"{shown} has an invalid host name")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        table.fail(name, f"{shown} {_INVALID_PORT}")
    if path and not parts.path.startswith("/"):
        table.fail(name, f"{shown} needs a path (for example /.appproxy/callback)")
    netloc = f"[{host}]" if ":" in host else host
    if port not in (None, 443):
        netloc += f":{port}"
    return f"https://{netloc}{parts.path}"


def dns_name(table: Table, name: str) -> str:
    """A DNS name (not an IP address), lowercased."""
    value = table.string(name)
    if _is_ip_address(value) or _is_ip_address(value.strip("[]")):
        table.fail(
            name,
            f"must be a DNS name, not an IP address ({quote(value)}): the service's"
            " certificate name is verified; put the address in service_address",
        )
    lowered = value.lower()
    if not _is_dns_name(lowered):
        table.fail(
            name,
            f"{quote(value)} is not a valid DNS name (letters, digits, '-' and '.';"
            " labels of 1 to 63 characters)",
        )
    return lowered


def address(table: Table, name: str, default: str) -> str:
    """A host name or an IP address (brackets around IPv6 optional)."""
    value = table.optional_string(name)
    if value is None:
        return default
    unbracketed = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if _is_ip_address(unbracketed):
        return ipaddress.ip_address(unbracketed).compressed
    lowered = value.lower()
    if not _is_dns_name(lowered):
        table.fail(name, f"{quote(value)} is not a valid host name or IP address")
    return lowered


def host_and_port(table: Table, name: str) -> str | None:
    """
    C{host}, C{host:port}, C{IPv4[:port]}, C{[IPv6][:port]} or a bare
    C{IPv6}, kept as written: the forms
    L{appproxy.oidc.settings.parse_provider_address} takes.
    """
    value = table.optional_string(name)
    if value is None:
        return None
    port = ""
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        valid = bool(close) and _is_ipv6_address(host) and (not rest or rest.startswith(":"))
        if rest:
            port = rest[1:]
            valid = valid and bool(port)
    elif value.count(":") > 1:
        valid = _is_ipv6_address(value)
    else:
        host, colon, port = value.partition(":")
        valid = (_is_ip_address(host) or _is_dns_name(host.lower())) and bool(port or not colon)
    if port and not _is_port(port):
        valid = False
    if not valid:
        table.fail(
            name,
            f"{quote(value)} is not a host name or address with an optional port"
            " (for example 127.0.0.1:8443)",
        )
    return value


def networks(table: Table, name: str) -> tuple[IPNetwork, ...]:
    """An array of IP addresses or networks (host bits dropped)."""
    result = []
    for index, text in enumerate(table.string_list(name)):
        try:
            result.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            table.fail_item(
                name,
                index,
                f"{quote(text)} is not an IP address or network (for example 10.0.0.0/8)",
            )
    return tuple(result)
