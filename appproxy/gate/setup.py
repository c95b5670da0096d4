"""
Putting sign-in together from the configuration and the state directory:
the cookie key ring, the assertion key, the state database and sign-in log,
the relying party, the policies, and the built-in identity provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import IResource

from appproxy.access.cookie import Sealer, SessionCookieCodec
from appproxy.access.keyring import KeyRingError
from appproxy.access.keyring_file import (
    KEYRING_FILENAME,
    load_keyring,
    load_or_create_keyring,
)
from appproxy.access.policy import MfaRule, PolicySet
from appproxy.access.risk import AnonymizerList, FailedSignIns, load_anonymizer_list
from appproxy.config import ConfigError, OidcConfig, ServiceConfig
from appproxy.gate.context import GateContext
from appproxy.gate.sessions import SessionRegistry
from appproxy.gate.signin import SignIn
from appproxy.identity.assertion import AssertionSigner, load_or_create_assertion_key
from appproxy.observe.metrics import SIGN_INS
from appproxy.oidc.client import RelyingParty
from appproxy.oidc.settings import RelyingPartySettings
from appproxy.state.database import StateDatabase
from appproxy.state.schema import DATABASE_NAME
from appproxy.state.signinlog import SignInLog
from appproxy.state.signins import SignInEvent

__all__ = ["SignInSetup", "build_sign_in"]

log = Logger()

#: How often expired references and used hand-off ids are purged.
PURGE_INTERVAL = 600.0


def _state_error(path: Path, problem: str) -> ConfigError:
    return ConfigError(str(path), "", problem)


def policy_set(config: ServiceConfig) -> PolicySet:
    """The conditional-access policies of C{config}."""
    oidc = config.oidc
    return PolicySet(
        locations={location.name: location for location in config.locations},
        policies=config.policies,
        mfa=oidc.mfa if oidc is not None else MfaRule(),
    )


def relying_party_settings(oidc: OidcConfig) -> RelyingPartySettings:
    return RelyingPartySettings(
        issuer=oidc.issuer,
        client_id=oidc.client_id,
        client_secret=oidc.client_secret,
        client_auth=oidc.client_auth,
        redirect_uri=oidc.callback_url,
        scopes=oidc.scopes,
        algorithms=oidc.algorithms,
        clock_skew=oidc.clock_skew,
        ca_pem=oidc.provider_ca_pem,
        provider_address=oidc.provider_address,
    )


def _relying_party(oidc: OidcConfig, reactor: Any) -> RelyingParty:
    return RelyingParty(
        relying_party_settings(oidc),
        clock=reactor,
        reactor=reactor,
        jwks_refetch_interval=oidc.jwks_refetch_interval,
    )


def _anonymizers(config: ServiceConfig) -> AnonymizerList | None:
    path = config.risk.anonymizers
    if path is None:
        return None
    try:
        return load_anonymizer_list(path)
    except (OSError, ValueError) as e:
        raise ConfigError(str(config.path), "risk.anonymizers", str(e)) from None


class SignInSetup:
    """
    The sign-in parts of a running service, or none of them when no app
    signs users in.
    """

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.database: StateDatabase | None = None
        self.sign_in: SignIn | None = None
        self.sign_in_log: SignInLog | None = None
        self.assertion: AssertionSigner | None = None
        self.identity_provider: Any = None
        self._purge: LoopingCall | None = None
        self.sessions: SessionRegistry | None = None
        oidc = config.oidc
        if oidc is None:
            return
        state = config.state_dir
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise _state_error(state, f"cannot create the state directory: {e.strerror}") from None
        now = int(reactor.seconds())
        try:
            ring = load_or_create_keyring(state / KEYRING_FILENAME, now)
        except KeyRingError as e:
            raise _state_error(state / "session-keys.json", e.problem) from None
        try:
            self.assertion = load_or_create_assertion_key(state / "assertion-key.pem")
        except (OSError, ValueError) as e:
            raise _state_error(state / "assertion-key.pem", str(e)) from None
        try:
            self.database = StateDatabase.open_at_startup(state / DATABASE_NAME, reactor=reactor)
        except (OSError, ValueError) as e:
            raise _state_error(state / DATABASE_NAME, str(e)) from None
        self.sign_in_log = SignInLog(self.database)
        self.sessions = SessionRegistry(self.database, reactor)
        self.sessions.load_at_startup(state / DATABASE_NAME)
        self.failures = FailedSignIns(
            limit=config.risk.failed_sign_in_limit, window=config.risk.failed_sign_in_window
        )
        self.sign_in = SignIn(
            GateContext(
                config=config,
                oidc=oidc,
                relying_party=_relying_party(oidc, reactor),
                codec=SessionCookieCodec(ring),
                sealer=Sealer(ring),
                policies=policy_set(config),
                failures=self.failures,
                anonymizers=_anonymizers(config),
                database=self.database,
                sign_in_log=self.sign_in_log,
                assertion=self.assertion,
                clock=reactor,
                sessions=self.sessions,
            )
        )
        if config.builtin_provider is not None:
            self.identity_provider = self._identity_provider(config, now)
        self._purge = LoopingCall(self._purge_expired)
        self._purge.clock = reactor
        self._purge.start(PURGE_INTERVAL, now=False)
        self.sessions.start()

    def _identity_provider(self, config: ServiceConfig, now: int) -> Any:
        from appproxy.idp.provider import ClientRegistration, IdentityProvider, ProviderSettings

        builtin = config.builtin_provider
        oidc = config.oidc
        assert builtin is not None and oidc is not None
        clients = [ClientRegistration(client_id=builtin.device_client_id, client_secret=None)]
        if oidc.issuer.rstrip("/") == builtin.issuer:
            if len(oidc.client_secret) < 16:
                raise ConfigError(
                    str(config.path),
                    "oidc.client_secret_file",
                    "the built-in provider needs a client secret of at least 16 characters",
                )
            clients.insert(
                0,
                ClientRegistration(
                    client_id=oidc.client_id,
                    client_secret=oidc.client_secret,
                    # The admin page (C{[admin] url}) signs in with the same client.
                    redirect_uris=(oidc.callback_url,)
                    + ((config.admin.url + "/admin/callback",) if config.admin.url else ()),
                    auth_methods=(oidc.client_auth,),
                ),
            )
        signing_key = config.state_dir / "idp-signing-key.pem"
        try:
            return IdentityProvider(
                ProviderSettings(
                    issuer=builtin.issuer,
                    clients=tuple(clients),
                    id_token_lifetime=3600,
                    failure_limit=config.risk.failed_sign_in_limit,
                    failure_window=int(config.risk.failed_sign_in_window),
                ),
                builtin.users_file,
                signing_key,
                clock=self.reactor,
                reactor=self.reactor,
                on_sign_in_attempt=self._provider_attempt,
                app_names=self._app_names,
            )
        except (OSError, ValueError) as e:
            raise _state_error(builtin.users_file, str(e)) from None

    def _app_names(self) -> frozenset[str]:
        """The apps users sign in to, as configured now: the provider may name them."""
        return frozenset(app.name for app in self.config.apps if app.signs_in)

    def _provider_attempt(self, user: str | None, address: str, ok: bool, step: str) -> None:
        """The built-in provider's password and OTP checks, for risk and the log."""
        now = self.reactor.seconds()
        if not ok:
            self.failures.record(user, address, now)
            SIGN_INS.labels("failure", step).inc()
        if self.sign_in_log is not None and not ok:
            self.sign_in_log.record(
                SignInEvent(
                    time=now,
                    user=user,
                    app="builtin-provider",
                    client_address=address,
                    result="failure",
                    step=step,
                    request_id="-",
                    detail=(
                        "password refused (wrong, or the account is disabled or locked)"
                        if step == "password"
                        else "one-time code refused"
                    ),
                )
            )

    def _purge_expired(self) -> None:
        if self.database is not None:
            self.database.purge_expired(int(self.reactor.seconds())).addErrback(
                lambda f: log.warn("Purging the state database failed: {e}", e=f.value)
            )

    def install(self, frontend: Any) -> None:
        """Give the front end what it needs to sign users in."""
        config = self.config
        oidc = config.oidc
        login_hosts: dict[str, IResource | None] = {}
        if oidc is not None:
            login_hosts[oidc.callback_host] = None
        if self.identity_provider is not None and config.builtin_provider is not None:
            login_hosts[config.builtin_provider.host] = self.identity_provider.resource
        frontend.set_auth(
            sign_in=self.sign_in,
            login_hosts=login_hosts,
            callback_path=oidc.callback_path if oidc is not None else "",
            trusted_proxies=config.trusted_proxies,
            jwks=self.assertion.jwks() if self.assertion is not None else b'{"keys":[]}',
        )

    def check_reload(self, config: ServiceConfig) -> None:
        """
        Refuse a new configuration that needs a restart to change sign-in.

        @raise ConfigError: if it cannot be taken on reload.
        """
        before, after = self.config, config
        if (before.oidc is None) != (after.oidc is None) or (
            (before.builtin_provider is None) != (after.builtin_provider is None)
        ):
            raise ConfigError(
                str(config.path), "oidc", "adding or removing sign-in takes a restart"
            )
        _anonymizers(config)
        if after.oidc is not None:
            path = after.state_dir / KEYRING_FILENAME
            try:
                load_keyring(path)
            except KeyRingError as e:
                raise _state_error(path, e.problem) from None

    def reload(self, config: ServiceConfig, frontend: Any) -> None:
        """Take a new configuration: apps, policies, the provider settings."""
        self.config = config
        if self.sign_in is not None and config.oidc is not None:
            context = self.sign_in.context
            if config.oidc != context.oidc:
                context.oidc = config.oidc
                old = context.relying_party
                context.relying_party = _relying_party(config.oidc, self.reactor)
                old.close()
            context.anonymizers = _anonymizers(config)
            # Keys rotated or retired with "appproxy keys" take effect now.
            ring = load_keyring(config.state_dir / KEYRING_FILENAME)
            context.codec = SessionCookieCodec(ring)
            context.sealer = Sealer(ring)
            context.set_config(config, policy_set(config))
        self.install(frontend)

    def close(self) -> defer.Deferred[None]:
        """Write what is pending and close the state database."""
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        if self.sessions is not None:
            self.sessions.stop()
        closing: defer.Deferred[Any] = defer.succeed(None)
        if self.sign_in is not None:
            closing = self.sign_in.relying_party.close()
        if self.sign_in_log is None or self.database is None:
            return closing.addCallback(lambda _: None)
        database, sign_in_log = self.database, self.sign_in_log
        closing.addCallback(lambda _: sign_in_log.flush())
        return closing.addCallback(lambda _: database.close())


def build_sign_in(config: ServiceConfig, reactor: Any) -> SignInSetup:
    """
    The sign-in parts for C{config}.

    @raise ConfigError: if a file of the state directory is unusable.
    """
    return SignInSetup(config, reactor)
