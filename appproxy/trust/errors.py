"""
The enrolment API's refusals: L{Refused} (a status, an L{ApiError} and the
reason audited), and what each refusal of a client certificate by the
connector registry becomes (L{CERTIFICATE_ERRORS}).
"""

from __future__ import annotations

from appproxy.tunnel.enrolment import ApiError, Message

__all__ = ["CERTIFICATE_ERRORS", "Answer", "Refused"]

#: A call's answer: the HTTP status and the message.
Answer = tuple[int, Message]

#: Refusals of a certificate (L{AdmissionGate.check}) as API errors.
CERTIFICATE_ERRORS = {
    "retired": (403, "certificate_retired", "this certificate was replaced by a renewal"),
    "disabled": (403, "connector_disabled", "this connector is disabled"),
    "revoked": (403, "connector_revoked", "this connector is revoked: register it again"),
    "unknown": (403, "connector_unknown", "this connector is not registered: register it again"),
    "stale": (503, "registry_unavailable", "the connector registry cannot be read; try again"),
}


class Refused(Exception):
    """A call refused: its status, error code, message and the reason audited."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        reason: str | None = None,
        actor: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.reason = reason or message
        #: Who the refused token names, when it is valid but not an administrator's.
        self.actor = actor

    def answer(self) -> Answer:
        return self.status, ApiError(error=self.error, message=self.message)
