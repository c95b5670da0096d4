"""
The enrolment API's messages (L{appproxy.tunnel.enrolment}): every message
survives L{encode} then L{decode}; anything else decodes to L{MessageError},
never another exception.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.enrolment import (
    MAX_BODY,
    ApiError,
    AppSettings,
    CaAnswer,
    CertificateAnswer,
    ConnectorSettings,
    MessageError,
    RegisterRequest,
    RegistrationInfo,
    RenewRequest,
    decode,
    encode,
)

_text = st.text(min_size=1, max_size=40)
_seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False)
_apps = st.builds(
    AppSettings,
    name=_text,
    internal_url=_text,
    verify_tls=st.booleans(),
    ca_pem=st.none() | _text,
    timeout=_seconds,
)
_messages = st.one_of(
    st.builds(CaAnswer, ca=_text),
    st.builds(
        RegistrationInfo,
        issuer=st.none() | _text,
        device_authorization_endpoint=st.none() | _text,
        token_endpoint=st.none() | _text,
        client_id=st.none() | _text,
        scope=_text,
        groups=st.lists(st.text(max_size=10)).map(tuple),
    ),
    st.builds(
        RegisterRequest,
        token=_text,
        csr=_text,
        group=st.none() | _text,
        host_name=_text,
        version=_text,
    ),
    st.builds(RenewRequest, csr=_text),
    st.builds(
        CertificateAnswer,
        connector_id=_text,
        group=_text,
        certificate=_text,
        ca=_text,
        not_after=_seconds,
    ),
    st.builds(
        ConnectorSettings,
        connector_id=_text,
        group=_text,
        apps=st.lists(_apps, max_size=3).map(tuple),
        connections=st.none() | st.integers(min_value=0, max_value=64),
        config_interval=_seconds,
        renew_after=_seconds,
        version=_text,
    ),
    st.builds(ApiError, error=_text, message=_text),
)
#: The messages' field names, so that random objects often have the right keys.
_keys = st.sampled_from(
    [
        "ca",
        "issuer",
        "scope",
        "groups",
        "token",
        "csr",
        "group",
        "host_name",
        "version",
        "connector_id",
        "certificate",
        "not_after",
        "apps",
        "name",
        "internal_url",
        "verify_tls",
        "ca_pem",
        "timeout",
        "connections",
        "config_interval",
        "renew_after",
        "error",
        "message",
    ]
) | st.text(max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=8),
    max_leaves=20,
)


class MessageTests(SynchronousTestCase):
    @given(_messages)
    def test_round_trip(self, message: Any) -> None:
        self.assertEqual(decode(type(message), encode(message)), message)

    @given(st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
    def test_anything_else(self, body: bytes) -> None:
        for kind in (RegisterRequest, ConnectorSettings, RegistrationInfo, CertificateAnswer):
            try:
                decode(kind, body)
            except MessageError:
                pass

    def test_too_large(self) -> None:
        with self.assertRaises(MessageError):
            decode(RenewRequest, b" " * (MAX_BODY + 1))
