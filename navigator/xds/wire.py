"""Protobuf wire-format helpers for assembling xDS responses from pre-encoded pieces.

A DiscoveryResponse is a handful of length-delimited fields; encoding them by hand lets a
front-end build each ``google.protobuf.Any`` once, when a snapshot is loaded, and serve every
sidecar by concatenating bytes instead of re-serializing messages per stream.

NOTE: protobuf parsers accept fields in any order and concatenated repeated fields, so
``resources`` entries, ``version_info``, ``type_url`` and ``nonce`` can be joined freely.
"""

from __future__ import annotations

ANY_TYPE_URL = 1
ANY_VALUE = 2

RESPONSE_VERSION_INFO = 1
RESPONSE_RESOURCES = 2
RESPONSE_TYPE_URL = 4
RESPONSE_NONCE = 5

_WIRE_LEN = 2


def varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """One length-delimited field (bytes, string or embedded message)."""
    return varint(number << 3 | _WIRE_LEN) + varint(len(data)) + data


def any_bytes(type_url: str, value: bytes) -> bytes:
    """A serialized ``google.protobuf.Any``."""
    return field(ANY_TYPE_URL, type_url.encode()) + field(ANY_VALUE, value)


def resource_entry(type_url: str, value: bytes) -> bytes:
    """One ``DiscoveryResponse.resources`` entry, ready to be concatenated into a response."""
    return field(RESPONSE_RESOURCES, any_bytes(type_url, value))


def response_body(*, type_url: str, version: str, entries: list[bytes]) -> bytes:
    """A DiscoveryResponse without its nonce: shared by every stream that gets this content."""
    return (
        b"".join(entries)
        + field(RESPONSE_VERSION_INFO, version.encode())
        + field(RESPONSE_TYPE_URL, type_url.encode())
    )


def with_nonce(body: bytes, nonce: str) -> bytes:
    """``body`` with its nonce: field 5 in both DiscoveryResponse and DeltaDiscoveryResponse."""
    return body + field(RESPONSE_NONCE, nonce.encode())


DELTA_SYSTEM_VERSION_INFO = 1
DELTA_RESOURCES = 2
DELTA_TYPE_URL = 4
DELTA_REMOVED_RESOURCES = 6

RESOURCE_VERSION = 1
RESOURCE_NAME = 3


def delta_resource(name: str, version: str, entry: bytes) -> bytes:
    """One ``DeltaDiscoveryResponse.resources`` entry from a ``resource_entry``.

    NOTE: ``Resource.resource`` (an ``Any``) is field 2, as ``DiscoveryResponse.resources``
    is, so the SotW entry's bytes are reused unchanged inside the ``Resource`` message.
    """
    return field(
        DELTA_RESOURCES,
        field(RESOURCE_NAME, name.encode()) + field(RESOURCE_VERSION, version.encode()) + entry,
    )


def delta_body(*, type_url: str, version: str, resources: list[bytes], removed: list[str]) -> bytes:
    """A DeltaDiscoveryResponse without its nonce."""
    return (
        b"".join(resources)
        + b"".join(field(DELTA_REMOVED_RESOURCES, name.encode()) for name in removed)
        + field(DELTA_SYSTEM_VERSION_INFO, version.encode())
        + field(DELTA_TYPE_URL, type_url.encode())
    )
