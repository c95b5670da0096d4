"""
What a twisted.web resource's C{render} returns when it answers later:
twisted.web's C{NOT_DONE_YET}, here so that the service's own pages (served
by the public listener's request, not twisted.web's site) need not import
C{twisted.web.server} and all it imports (docs/performance.md, the daemon's
memory).  The same value as twisted.web's, so a resource served by either
answers the same.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NOT_DONE_YET"]

#: C{twisted.web.server.NOT_DONE_YET} (compared with C{is}, as twisted.web does).
NOT_DONE_YET: Final = 1
