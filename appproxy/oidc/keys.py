"""
The provider's signing keys: the signature algorithms an ID token may use
and the key each needs, the JWK Set parser, and the choice of the key that
verifies a token.

Pure: no Twisted, no I/O.  PyJWT loads the keys; every check of a key's type,
size, algorithm and use is made here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from appproxy.oidc._wire import json_object
from appproxy.oidc.errors import SignInError

__all__ = ["ID_TOKEN_ALGORITHMS", "choose_key", "parse_jwks"]

_MIN_RSA_BITS = 2048


def _is_rsa(key: object) -> bool:
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS


def _is_ec(curve: type[ec.EllipticCurve]) -> Callable[[object], bool]:
    def check(key: object) -> bool:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, curve)

    return check


def _is_okp(key: object) -> bool:
    return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


# Signature algorithms an ID token may use, with the JWK key type each needs
# and a check of the loaded public key.  Asymmetric only: never "none", never
# an HMAC (a provider's public key, which anyone can fetch, would be the
# "secret").
_ALGORITHMS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "RS256": ("RSA", _is_rsa),
    "RS384": ("RSA", _is_rsa),
    "RS512": ("RSA", _is_rsa),
    "PS256": ("RSA", _is_rsa),
    "PS384": ("RSA", _is_rsa),
    "PS512": ("RSA", _is_rsa),
    "ES256": ("EC", _is_ec(ec.SECP256R1)),
    "ES384": ("EC", _is_ec(ec.SECP384R1)),
    "ES512": ("EC", _is_ec(ec.SECP521R1)),
    "EdDSA": ("OKP", _is_okp),
}

#: The signature algorithms appproxy can accept for ID tokens.
ID_TOKEN_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)


def parse_jwks(document: bytes) -> tuple[dict[str, jwt.PyJWK], list[str]]:
    """
    Load the usable signing keys from a JWK Set document.

    Skipped (with a reason each): entries that are not objects, symmetric
    (C{oct}) keys, keys of other types or for other algorithms, private keys,
    keys PyJWT cannot load, RSA keys shorter than 2048 bits.

    @return: the keys, indexed by their C{kid}; a key without a C{kid}, or
        with a C{kid} already taken, is indexed by a placeholder (C{#N},
        C{kid#N}): match keys by L{jwt.PyJWK.key_id}, never by index.  And the
        reasons entries were skipped.

    @raise ValueError: if the document is not a JSON object with a C{keys}
        list.
    """
    jwks = json_object(document)
    if jwks is None or not isinstance(jwks.get("keys"), list):
        raise ValueError("the JWKS document is not a JSON object with a 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    for index, entry in enumerate(jwks["keys"]):
        if not isinstance(entry, dict):
            skipped.append(f"key {index}: not a JSON object")
            continue
        kid = entry.get("kid")
        label = f"key {index} (kid {kid!r})" if isinstance(kid, str) else f"key {index}"
        kty = entry.get("kty")
        if kty == "oct":
            skipped.append(f"{label}: symmetric keys are never used")
            continue
        if kty not in ("RSA", "EC", "OKP"):
            skipped.append(f"{label}: unsupported key type {kty!r}")
            continue
        if "d" in entry:
            skipped.append(f"{label}: a private key has no place in a JWKS")
            continue
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"{label}: kid is not a string")
            continue
        alg = entry.get("alg")
        if alg is not None and alg not in _ALGORITHMS:
            skipped.append(f"{label}: algorithm {alg!r} is not a signature algorithm we accept")
            continue
        try:
            key = jwt.PyJWK(entry)
        except Exception as error:  # PyJWT raises several types for bad input.
            skipped.append(f"{label}: cannot be loaded ({type(error).__name__})")
            continue
        if not any(check(key.key) for _, check in _ALGORITHMS.values()):
            skipped.append(f"{label}: not a usable public key (too short, or unknown curve)")
            continue
        name = kid if isinstance(kid, str) and kid not in keys else f"{kid or ''}#{index}"
        keys[name] = key
    return keys, skipped


def _key_problem(key: jwt.PyJWK, alg: str) -> str | None:
    """Why C{key} cannot verify a signature made with C{alg}; L{None} if it can."""
    kty, check = _ALGORITHMS[alg]
    data = key._jwk_data
    if key.key_type != kty or not check(key.key):
        return "The ID token's key is of the wrong type for its algorithm (kty)"
    if "alg" in data and data["alg"] != alg:
        return "The ID token's algorithm is not the one its key is for (alg)"
    if "use" in data and data["use"] != "sig":
        return "The ID token's key is not a signing key (use)"
    key_ops = data.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return "The ID token's key may not be used to verify signatures (key_ops)"
    return None


def choose_key(keys: Mapping[str, jwt.PyJWK], kid: object, alg: str) -> jwt.PyJWK:
    """
    The key that verifies a token signed with C{alg} (one of
    L{ID_TOKEN_ALGORITHMS}): the one named C{kid} that fits C{alg}, or
    without a C{kid}, the only key that fits it.

    @raise SignInError: (step C{"id-token"}) if there is no such key, or
        several without a C{kid} to choose between them.
    """
    if kid is not None:
        if not isinstance(kid, str):
            raise SignInError("id-token", "The ID token's key id is malformed (kid)")
        candidates = [key for key in keys.values() if key.key_id == kid]
        if not candidates:
            raise SignInError(
                "id-token", "The ID token is signed with a key the provider does not publish (kid)"
            )
        problems = [_key_problem(key, alg) for key in candidates]
        for key, problem in zip(candidates, problems, strict=True):
            if problem is None:
                return key
        raise SignInError("id-token", problems[0] or "")
    usable = [key for key in keys.values() if _key_problem(key, alg) is None]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise SignInError(
            "id-token", "The provider publishes no key for the ID token's algorithm (alg)"
        )
    raise SignInError(
        "id-token", "The ID token names no key (kid) and the provider publishes several"
    )
