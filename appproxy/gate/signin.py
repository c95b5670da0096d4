"""
L{SignIn}: the sign-in machinery as the front end calls it, one object per
service made of three parts over one L{GateContext}:

  - on an app's host, L{Gate.admit} reads the app's session cookie and
    evaluates conditional access for every request; a request without a
    valid session is sent to the login host to sign in;
  - on the login host, L{Flow.start} begins the authorization code flow
    (PKCE, C{state} bound to a short-lived flow cookie, C{nonce}) and
    L{Flow.callback} finishes it: the code is exchanged, the ID token
    verified, assignment and policy evaluated, a session made;
  - back on the app's host, L{AppCookie.hand_off} turns the single-use,
    short-lived, encrypted hand-off into the app's own cookie, and
    L{AppCookie.sign_out} clears it.

Every answer other than "go on to the app" is a L{Reply} the front end
writes as it is.  Every sign-in attempt and decision goes to the sign-in log.
"""

from __future__ import annotations

import attrs

from appproxy.gate.app_cookie import AppCookie
from appproxy.gate.flow import Flow
from appproxy.gate.gate import Gate
from appproxy.oidc.client import RelyingParty

__all__ = ["SignIn"]


@attrs.frozen(slots=False)
class SignIn(Gate, Flow, AppCookie):
    """
    The service's sign-in machinery, shared by every request: the gate, the
    flow and the app's cookie paths, each a part over the same C{context}.
    """

    @property
    def relying_party(self) -> RelyingParty:
        """The relying party of the sign-in flow (replaced on reload)."""
        return self.context.relying_party
