"""
How a sign-in fails: the steps of a sign-in, L{SignInError}, and the
provider's own error text made safe to quote in a reason.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["SIGN_IN_STEPS", "SignInError", "provider_error"]

#: The steps of a sign-in, as named on error pages and in the sign-in log.
#: The relying party raises the first five.
SIGN_IN_STEPS = (
    "discovery",
    "authorization",
    "state",
    "token",
    "id-token",
    "assignment",
    "policy",
    "hand-off",
    "session",
)

# Longest provider error text shown to users.
_MAX_DESCRIPTION = 200

# RFC 6749 section 5.2: error codes are made of these characters.
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}\Z")


@attrs.define(auto_exc=True)
class SignInError(Exception):
    """
    A sign-in failed.

    @ivar step: which step failed: C{"discovery"}, C{"authorization"},
        C{"state"}, C{"token"} or C{"id-token"} (see L{SIGN_IN_STEPS}).
    @ivar reason: one sentence, safe to show to the user and to log: it never
        holds a token, a code or a secret.
    """

    step: str
    reason: str

    def __str__(self) -> str:
        return f"{self.step}: {self.reason}"


def _provider_text(text: object) -> str:
    """
    Text from the provider (or from whoever crafted the URL) made safe to
    quote: printable ASCII only, at most L{_MAX_DESCRIPTION} characters.
    """
    if not isinstance(text, str):
        return ""
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text)
    if len(cleaned) > _MAX_DESCRIPTION:
        cleaned = cleaned[: _MAX_DESCRIPTION - 3] + "..."
    return cleaned


def provider_error(error: object, description: object) -> str:
    """
    A provider's C{error} and C{error_description}, as quoted in a
    L{SignInError}'s reason: C{code (text)}, or C{"unknown error"} for a
    code that is not one (RFC 6749 section 5.2).
    """
    code = error if isinstance(error, str) and _ERROR_CODE.match(error) else "unknown error"
    text = _provider_text(description)
    return f"{code} ({text})" if text else code
