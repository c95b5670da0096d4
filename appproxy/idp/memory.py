"""
Bounded in-memory state for the built-in identity provider: maps whose
entries expire, failed-attempt counters, and L{MemoryStore}, the
L{appproxy.idp.store.ProviderStore} made of them.

Pure: no reactor; every call takes the current time.  Expired entries are
dropped lazily, as new ones come in, so nothing needs a timer.

All of this lives in one process.  Several service processes serving the
same provider would need a shared L{ProviderStore} instead (authorization
codes, SSO sessions, access tokens and device codes must be visible to
whichever process gets the next request; the counters should be shared for
the limits to hold).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

from appproxy.idp.settings import ProviderSettings
from appproxy.idp.store import AccessGrant, CodeGrant, DeviceGrant, Identity, Login

__all__ = ["ExpiringMap", "FailureCounter", "MemoryStore"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define
class _Entry(Generic[V]):
    expires_at: float
    value: V


@attrs.define(kw_only=True, eq=False)
class ExpiringMap(Generic[K, V]):
    """
    A map whose entries expire C{lifetime} seconds after they are put, and
    which holds at most C{capacity} entries (the oldest go first).

    Entries are kept in the order they were put; since every entry lives
    C{lifetime} seconds, that is also the order in which they expire.
    """

    lifetime: float
    capacity: int
    _entries: dict[K, _Entry[V]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.lifetime <= 0 or self.capacity < 1:
            raise ValueError("lifetime and capacity must be positive")

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now and len(self._entries) <= self.capacity:
                return
            del self._entries[key]

    def put(self, key: K, value: V, now: float) -> float:
        """
        Add (or replace, with a new lifetime) C{key}.

        @return: when it expires.
        """
        self._entries.pop(key, None)
        expires_at = now + self.lifetime
        self._entries[key] = _Entry(expires_at, value)
        self._prune(now)
        return expires_at

    def update(self, key: K, value: V, now: float) -> bool:
        """
        Replace the value of a live entry, keeping its expiry.

        @return: whether there was a live entry to update.
        """
        entry = self._live(key, now)
        if entry is None:
            return False
        entry.value = value
        return True

    def _live(self, key: K, now: float) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def get(self, key: K, now: float) -> V | None:
        """The value of C{key}; L{None} if absent or expired."""
        entry = self._live(key, now)
        return None if entry is None else entry.value

    def expires_at(self, key: K, now: float) -> float | None:
        entry = self._live(key, now)
        return None if entry is None else entry.expires_at

    def pop(self, key: K, now: float) -> V | None:
        """Remove C{key}; its value if it was live, L{None} otherwise."""
        entry = self._entries.pop(key, None)
        if entry is None or entry.expires_at <= now:
            return None
        return entry.value


@attrs.define
class _Count:
    started: float
    failures: int


@attrs.define(kw_only=True, eq=False)
class FailureCounter:
    """
    Failed attempts per key (a user name, an address): C{limit} failures
    within C{window} seconds of the first lock the key until the window ends.

    At most C{capacity} keys are tracked; the oldest windows are forgotten
    first.
    """

    limit: int
    window: float
    capacity: int = 100_000
    _counts: dict[str, _Count] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0 or self.capacity < 1:
            raise ValueError("limit, window and capacity must be positive")

    def _current(self, key: str, now: float) -> _Count | None:
        count = self._counts.get(key)
        if count is not None and count.started + self.window <= now:
            del self._counts[key]
            return None
        return count

    def is_locked(self, key: str, now: float) -> bool:
        count = self._current(key, now)
        return count is not None and count.failures >= self.limit

    def failures(self, key: str, now: float) -> int:
        count = self._current(key, now)
        return 0 if count is None else count.failures

    def record(self, key: str, now: float) -> None:
        """Count a failure (or an attempt whose outcome is not known yet)."""
        count = self._current(key, now)
        if count is None:
            self._counts[key] = _Count(now, 1)
            while len(self._counts) > self.capacity:
                del self._counts[next(iter(self._counts))]
        else:
            count.failures += 1

    def forgive(self, key: str, now: float) -> None:
        """Take back one L{record}: the attempt succeeded."""
        count = self._current(key, now)
        if count is not None and count.failures > 0:
            count.failures -= 1

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)


@attrs.define(eq=False)
class MemoryStore:
    """
    The provider's state in this process's memory: a
    L{appproxy.idp.store.ProviderStore}.  Build it with L{for_settings}.
    """

    logins: ExpiringMap[str, Login]
    sessions: ExpiringMap[str, Identity]
    codes: ExpiringMap[str, CodeGrant]
    # Codes exchanged already, with the access tokens they gave: a replay
    # revokes them.
    spent_codes: ExpiringMap[str, tuple[str, ...]]
    access_tokens: ExpiringMap[str, AccessGrant]
    # Kept past their expiry for a while, to answer "expired_token".
    devices: ExpiringMap[str, DeviceGrant]
    user_codes: ExpiringMap[str, str]
    user_failures: FailureCounter
    address_failures: FailureCounter
    totp_steps: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def for_settings(cls, settings: ProviderSettings) -> MemoryStore:
        """A store whose lifetimes and limits are those of C{settings}."""
        s = settings
        return cls(
            logins=ExpiringMap(lifetime=s.login_lifetime, capacity=10_000),
            sessions=ExpiringMap(lifetime=s.session_lifetime, capacity=100_000),
            codes=ExpiringMap(lifetime=s.code_lifetime, capacity=10_000),
            spent_codes=ExpiringMap(
                lifetime=max(s.code_lifetime, s.access_token_lifetime), capacity=10_000
            ),
            access_tokens=ExpiringMap(lifetime=s.access_token_lifetime, capacity=100_000),
            devices=ExpiringMap(lifetime=2 * s.device_code_lifetime, capacity=10_000),
            user_codes=ExpiringMap(lifetime=s.device_code_lifetime, capacity=10_000),
            user_failures=FailureCounter(limit=s.failure_limit, window=s.failure_window),
            address_failures=FailureCounter(limit=s.address_failure_limit, window=s.failure_window),
        )

    def add_login(self, login_id: str, login: Login, now: float) -> None:
        self.logins.put(login_id, login, now)

    def login(self, login_id: str, now: float) -> Login | None:
        return self.logins.get(login_id, now)

    def update_login(self, login_id: str, login: Login, now: float) -> None:
        self.logins.update(login_id, login, now)

    def end_login(self, login_id: str, now: float) -> None:
        self.logins.pop(login_id, now)

    def add_session(self, session_id: str, identity: Identity, now: float) -> None:
        self.sessions.put(session_id, identity, now)

    def session(self, session_id: str, now: float) -> Identity | None:
        return self.sessions.get(session_id, now)

    def end_session(self, session_id: str, now: float) -> None:
        self.sessions.pop(session_id, now)

    def add_code(self, code: str, grant: CodeGrant, now: float) -> None:
        self.codes.put(code, grant, now)

    def take_code(self, code: str, now: float) -> CodeGrant | None:
        grant = self.codes.pop(code, now)
        if grant is not None:
            self.spent_codes.put(code, (), now)
        return grant

    def replay_code(self, code: str, now: float) -> bool:
        tokens = self.spent_codes.pop(code, now)
        for token in tokens or ():
            self.access_tokens.pop(token, now)
        return tokens is not None

    def add_access_token(
        self, token: str, grant: AccessGrant, now: float, *, code: str | None = None
    ) -> None:
        self.access_tokens.put(token, grant, now)
        given = self.spent_codes.get(code, now) if code is not None else None
        if code is not None and given is not None:
            self.spent_codes.update(code, (*given, token), now)

    def access_token(self, token: str, now: float) -> AccessGrant | None:
        return self.access_tokens.get(token, now)

    def add_device(self, device_code: str, grant: DeviceGrant, now: float) -> None:
        self.devices.put(device_code, grant, now)
        self.user_codes.put(grant.user_code, device_code, now)

    def device(self, device_code: str, now: float) -> DeviceGrant | None:
        return self.devices.get(device_code, now)

    def update_device(self, device_code: str, grant: DeviceGrant, now: float) -> None:
        self.devices.update(device_code, grant, now)

    def end_device(self, device_code: str, now: float) -> None:
        self.devices.pop(device_code, now)

    def device_code_for(self, user_code: str, now: float) -> str | None:
        return self.user_codes.get(user_code, now)

    def release_user_code(self, user_code: str, now: float) -> None:
        self.user_codes.pop(user_code, now)

    def is_locked(self, user: str | None, address: str, now: float) -> bool:
        return (
            user is not None and self.user_failures.is_locked(user, now)
        ) or self.address_failures.is_locked(address, now)

    def record_failure(self, user: str | None, address: str, now: float) -> None:
        if user is not None:
            self.user_failures.record(user, now)
        self.address_failures.record(address, now)

    def clear_user_failures(self, user: str) -> None:
        self.user_failures.clear(user)

    def forgive_address_failure(self, address: str, now: float) -> None:
        self.address_failures.forgive(address, now)

    def use_totp_step(self, user: str, step: int) -> bool:
        if step <= self.totp_steps.get(user, -1):
            return False
        self.totp_steps[user] = step
        return True
