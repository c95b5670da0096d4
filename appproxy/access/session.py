"""
The signed-in user's session: what appproxy knows of a user for one app, and
the JSON document the session cookie carries.

L{Session} is the value; L{session_document} and L{session_from_document}
turn it into the document and back (compact, short keys, every field always
present, checked exactly on the way back).  The encryption is
L{appproxy.access.cookie}.  Pure code: no reactor, no I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import attrs

__all__ = [
    "PAYLOAD_VERSION",
    "ClaimValue",
    "Session",
    "new_session_id",
    "new_token",
    "older_session_document",
    "session_document",
    "session_from_document",
]

#: A claim value a session keeps: a string, or a list of strings.
ClaimValue = str | tuple[str, ...]

#: The C{"v"} of every document appproxy seals (sessions and sealed blobs).
PAYLOAD_VERSION = 1


#: The characters an id may start with: URL-safe base64 without C{-}.
_FIRST_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"


def new_token(nbytes: int) -> str:
    """
    C{secrets.token_urlsafe(nbytes)}, but never starting with C{-}: an id an
    administrator types after a command (C{appproxy sessions revoke
    --session ID}, C{appproxy keys retire KEY_ID}) would otherwise read as
    an option.  A leading C{-} is replaced by a character drawn uniformly
    from the other 63, so the first character stays uniform over those.
    """
    token = secrets.token_urlsafe(nbytes)
    if token.startswith("-"):
        token = secrets.choice(_FIRST_CHARACTERS) + token[1:]
    return token


def new_session_id() -> str:
    """
    A new session id: 128 random bits, URL-safe base64 (22 characters),
    never starting with C{-} (L{new_token}).
    """
    return new_token(16)


@attrs.frozen(kw_only=True)
class Session:
    """
    What appproxy knows of a signed-in user for one app.

    All times are POSIX seconds (integers).

    @ivar app: the app's name; a session is valid for that app only.
    @ivar user: the user name (the claim named by C{oidc.username_claim}).
    @ivar subject: the provider's C{sub}.
    @ivar issuer: the provider's C{iss}.
    @ivar name: the display name (C{name}), if the provider gave one.
    @ivar email: C{email}, if given.
    @ivar groups: the user's groups (C{oidc.groups_claim}); empty if they are
        stored by reference (see C{groups_ref}).
    @ivar roles: C{roles}.
    @ivar amr: the authentication methods (C{amr}), e.g. C{("pwd", "otp")}.
    @ivar acr: the authentication context class (C{acr}), if given.
    @ivar claims: other claims that the app's header mapping names, by name.
    @ivar auth_time: when the user last authenticated at the provider.
    @ivar issued_at: when appproxy made this session.
    @ivar expires_at: when it stops being valid.
    @ivar groups_ref: the key under which C{groups} are stored in the state
        database, when they would make the cookie too large.
    @ivar token_ref: the key under which the ID token is stored (for
        sign-out's C{id_token_hint}); L{None} if not kept.
    @ivar session_id: the session's id, random, the same in every copy of
        its cookie: what sign-out and C{appproxy sessions revoke} revoke.
    """

    app: str
    user: str
    subject: str
    issuer: str
    name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    acr: str | None = None
    claims: Mapping[str, ClaimValue] = attrs.field(factory=dict)
    auth_time: int
    issued_at: int
    expires_at: int
    groups_ref: str | None = None
    token_ref: str | None = None
    session_id: str = attrs.field(factory=new_session_id)

    def claim(self, name: str) -> ClaimValue | None:
        """
        The value of the claim C{name} as the header mapping names it:
        C{sub}, C{name}, C{email}, C{groups}, C{roles}, C{amr}, C{acr} and
        C{user} (the user name) come from the fields above; any other name
        from C{claims}.  L{None} if the session has no such claim.
        """
        field = _CLAIM_FIELDS.get(name)
        if field is not None:
            value: ClaimValue | None = getattr(self, field)
            return value
        return self.claims.get(name)


#: The claims L{Session.claim} reads from the session's fields: claim -> field.
_CLAIM_FIELDS: dict[str, str] = {
    "user": "user",
    "sub": "subject",
    "name": "name",
    "email": "email",
    "groups": "groups",
    "roles": "roles",
    "amr": "amr",
    "acr": "acr",
}


# The session as JSON: short keys, every field always present.
_FIELDS = frozenset(
    {"v", "a", "u", "s", "i", "n", "e", "g", "r", "m", "c", "x", "at", "ia", "ea", "gr", "tr", "si"}
)
# The fields of a session made before sessions had an id.
_FIELDS_WITHOUT_ID = _FIELDS - {"si"}


def session_document(session: Session) -> dict[str, object]:
    """C{session} as the JSON document the cookie carries (short keys, every field)."""
    return {
        "v": PAYLOAD_VERSION,
        "a": session.app,
        "u": session.user,
        "s": session.subject,
        "i": session.issuer,
        "n": session.name,
        "e": session.email,
        "g": list(session.groups),
        "r": list(session.roles),
        "m": list(session.amr),
        "c": session.acr,
        "x": {
            name: list(value) if isinstance(value, tuple | list) else value
            for name, value in session.claims.items()
        },
        "at": session.auth_time,
        "ia": session.issued_at,
        "ea": session.expires_at,
        "gr": session.groups_ref,
        "tr": session.token_ref,
        "si": session.session_id,
    }


def older_session_document(document: object) -> bool:
    """
    Whether C{document} looks like a session an older appproxy made, before
    sessions had an id: such a cookie cannot be revoked, so it is refused
    (the user signs in once more).
    """
    return type(document) is dict and document.keys() == _FIELDS_WITHOUT_ID


_STR = frozenset({str})
_NONE_OR_STR = frozenset({type(None), str})


def _claims_from_document(claims: object) -> dict[str, ClaimValue] | None:
    if type(claims) is not dict:
        return None
    out: dict[str, ClaimValue] = {}
    for name, value in claims.items():
        if type(name) is not str:
            return None
        if type(value) is str:
            out[name] = value
        elif type(value) is list and set(map(type, value)) <= _STR:
            out[name] = tuple(value)
        else:
            return None
    return out


def session_from_document(document: object) -> Session | None:
    """
    The session in C{document}, or L{None} unless C{document} has exactly
    the shape L{session_document} makes (every field, each of its type).

    One pass of checks on locals: this runs on every authenticated request.
    """
    if type(document) is not dict or document.keys() != _FIELDS:
        return None
    version = document["v"]
    groups, roles, amr = document["g"], document["r"], document["m"]
    auth_time, issued_at, expires_at = document["at"], document["ia"], document["ea"]
    if not (
        type(version) is int
        and version == PAYLOAD_VERSION
        and {
            type(document["a"]),
            type(document["u"]),
            type(document["s"]),
            type(document["i"]),
            type(document["si"]),
        }
        == _STR
        and {
            type(document["n"]),
            type(document["e"]),
            type(document["c"]),
            type(document["gr"]),
            type(document["tr"]),
        }
        <= _NONE_OR_STR
        and type(groups) is list
        and type(roles) is list
        and type(amr) is list
        and set(map(type, groups)) <= _STR
        and set(map(type, roles)) <= _STR
        and set(map(type, amr)) <= _STR
        and type(auth_time) is int
        and type(issued_at) is int
        and type(expires_at) is int
    ):
        return None
    claims = _claims_from_document(document["x"])
    if claims is None:
        return None
    return Session(
        app=document["a"],
        user=document["u"],
        subject=document["s"],
        issuer=document["i"],
        name=document["n"],
        email=document["e"],
        groups=tuple(groups),
        roles=tuple(roles),
        amr=tuple(amr),
        acr=document["c"],
        claims=claims,
        auth_time=auth_time,
        issued_at=issued_at,
        expires_at=expires_at,
        groups_ref=document["gr"],
        token_ref=document["tr"],
        session_id=document["si"],
    )
