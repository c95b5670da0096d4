"""
The OpenID Connect relying party: appproxy signing users in at an identity
provider with the authorization code flow (PKCE, S256).

Pure (no Twisted, no I/O; may import only the standard library, attrs,
cryptography and PyJWT, and each other):

  - L{errors}: L{SignInError<errors.SignInError>} and the steps of a sign-in;
  - L{settings}: L{RelyingPartySettings<settings.RelyingPartySettings>};
  - L{metadata}: the provider's discovery document;
  - L{authorize}: PKCE, the authorization URL, the check of the response,
    the end-session URL;
  - L{keys}: the accepted signature algorithms, JWKS parsing, key choice;
  - L{tokens}: the code exchange request and response, ID-token verification;
  - C{_wire}: strict JSON, base64url, https URLs, constant-time comparison.

Twisted (treq, the reactor): L{jwks} (the key cache), L{client}
(L{RelyingParty<client.RelyingParty>}), and the private C{_provider_http}
(TLS endpoints, the capped body reader) and C{_shared_call}.

Nothing here imports from the rest of appproxy.
"""
