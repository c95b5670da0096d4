"""
The service's end of the tunnel, in memory against a raw h2 connector
(L{tests.tunnel_memory}): capacity is given back only once h2 counts a
stream closed; control traffic cannot be reached from a user request; a
failed settings push closes the connection cleanly; one failing stream ends
that stream only; secrets never enter the shared HPACK table.
"""

from __future__ import annotations

from h2.events import RequestReceived
from hpack import NeverIndexedHeaderTuple
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.fields import CONTROL_FIELD
from appproxy.tunnel.service_control import SETTINGS_TIMEOUT
from tests.tunnel_memory import FakeExchange, ServiceEnd, job


class Base(SynchronousTestCase):
    def end(self, capacity: int = 1, ready: bool = True) -> ServiceEnd:
        end = ServiceEnd(capacity)
        self.addCleanup(end.close)
        if ready:
            end.answer_settings()
            self.assertTrue(end.proto.ready)
        return end

    def put(self, end: ServiceEnd, *jobs_: object) -> None:
        for j in jobs_:
            end.group.put(j, lambda _: self.fail("queue timeout"))  # type: ignore[arg-type]
        end.pump()
        # Error answers go out from the reactor, never from inside put().
        end.clock.advance(0)


class CapacityTests(Base):
    def test_cancelled_stream_frees_room_after_reset(self) -> None:
        """
        At full capacity, a user leaving (its stream cancelled) gives its
        room to the next queued job only after the stream is reset: the
        next job is opened, not refused with 400.
        """
        end = self.end(capacity=1)
        a, b = FakeExchange(), FakeExchange()
        self.put(end, job(b"/a", exchange=a), job(b"/b", exchange=b))
        self.assertEqual(a.names(), ["opened"])
        self.assertEqual(b.names(), [])
        a.stream.cancel()
        end.pump()
        self.assertEqual(b.names(), ["opened"], b.events)
        self.assertIn(a.stream.stream_id, end.resets())
        self.assertIn(b.stream.stream_id, end.requests())

    def test_error_answer_before_body_sent_frees_room_after_reset(self) -> None:
        """
        The connector answers a POST with an error before its body was sent:
        the stream is reset (the body is not wanted), then the next job goes.
        """
        end = self.end(capacity=1)
        a, b = FakeExchange(), FakeExchange()
        self.put(end, job(b"/a", b"POST", has_body=True, exchange=a), job(b"/b", exchange=b))
        sid = a.stream.stream_id
        end.answer(sid, [(b":status", b"502"), (b"appproxy-error", b"backend-refused")])
        self.assertEqual(a.events[-1], ("error", 502, "backend-refused"))
        self.assertEqual(b.names(), ["opened"], b.events)
        self.assertEqual(end.proto.open_streams(), 1)

    def test_timed_out_stream_frees_room_after_reset(self) -> None:
        end = self.end(capacity=1)
        a, b = FakeExchange(), FakeExchange()
        self.put(end, job(b"/a", exchange=a), job(b"/b", exchange=b))
        end.clock.advance(APP_TIMEOUT + 10)
        end.pump()
        self.assertEqual(a.events[-1][:2], ("error", 504))
        self.assertEqual(b.names(), ["opened"], b.events)


APP_TIMEOUT = job().app.backend_timeout


class ControlTests(Base):
    def test_user_request_never_control(self) -> None:
        """
        A user request whose path is the old settings path and that carries
        the control field itself is forwarded as a user request: the field
        (and any other of the tunnel's own) is removed.
        """
        end = self.end(capacity=5)
        a = FakeExchange()
        headers = [
            (CONTROL_FIELD, b"settings"),
            (b"appproxy-app", b"other"),
            (b"x-kept", b"1"),
        ]
        self.put(end, job(b"/.appproxy/config", b"POST", headers, exchange=a))
        sent = end.requests()[a.stream.stream_id]
        self.assertNotIn(CONTROL_FIELD, sent)
        self.assertEqual(sent[b"appproxy-app"], b"web")
        self.assertEqual(sent[b":path"], b"/.appproxy/config")
        self.assertEqual(sent[b"x-kept"], b"1")

    def assert_closed_cleanly(self, end: ServiceEnd) -> None:
        self.assertFalse(end.proto.ready)
        self.assertEqual(len(end.proto.settings), 0)
        self.assertTrue(end.transport.disconnecting)
        self.assertFalse(end.transport.aborted)
        self.assertIn("ConnectionTerminated", [type(e).__name__ for e in end.events])

    def test_settings_refused(self) -> None:
        end = self.end(ready=False)
        end.answer_settings(b"400")
        self.assert_closed_cleanly(end)

    def test_settings_reset(self) -> None:
        end = self.end(ready=False)
        end.peer.reset_stream(end.settings_stream())
        end.pump()
        self.assert_closed_cleanly(end)

    def test_settings_unanswered(self) -> None:
        end = self.end(ready=False)
        end.clock.advance(SETTINGS_TIMEOUT)
        end.pump()
        self.assert_closed_cleanly(end)

    def test_failed_reload_push_lets_streams_finish(self) -> None:
        """
        A reload's push refused while a request is in flight: no new job is
        taken, the request finishes, then the connection closes.
        """
        end = self.end(capacity=5)
        a, b = FakeExchange(), FakeExchange()
        self.put(end, job(b"/a", exchange=a))
        end.factory.set_apps([job().app])
        end.pump()
        pushes = [sid for sid, h in end.requests().items() if h.get(CONTROL_FIELD) == b"settings"]
        end.answer(pushes[-1], [(b":status", b"400")])
        self.assertFalse(end.transport.disconnecting)
        self.put(end, job(b"/b", exchange=b))
        self.assertEqual(b.names(), [])
        end.answer(a.stream.stream_id, [(b":status", b"200")])
        self.assertEqual(a.names(), ["opened", "response", "ended"])
        self.assertTrue(end.transport.disconnecting)
        self.assertFalse(end.transport.aborted)


class BoundaryTests(Base):
    def test_unforwardable_request_lines(self) -> None:
        """
        A method or path the connector's HTTP client refuses gets 400 at the
        service; nothing reaches the connector and the next job goes on.
        """
        end = self.end(capacity=5)
        bad = [
            job(b"/a b"),
            job(b"/caf\xc3\xa9"),
            job(b"/", b"GE@T"),
            job(b"/", headers=[(b"x-bad", b"a\x00b")]),
        ]
        good = FakeExchange()
        self.put(end, *bad, job(b"/fine", exchange=good))
        for j in bad:
            self.assertEqual(j.exchange.events[-1], ("error", 400, "bad-request"))  # type: ignore[attr-defined]
        self.assertEqual(good.names(), ["opened"])
        self.assertEqual([h[b":path"] for h in end.requests().values()][-1], b"/fine")
        self.assertEqual(end.factory.stream_errors, len(bad))
        self.assertFalse(end.transport.disconnecting)

    def test_failing_user_side_ends_its_stream_only(self) -> None:
        """
        The user side raising while taking the response head ends that
        stream (RST_STREAM, counted, a 502 page since nothing went to the
        user yet); another stream on the connection completes.
        """
        end = self.end(capacity=5)
        bad, good = FakeExchange(raise_on_response=True), FakeExchange()
        self.put(end, job(b"/bad", exchange=bad), job(b"/good", exchange=good))
        end.answer(bad.stream.stream_id, [(b":status", b"200")], end=False)
        end.clock.advance(0)
        self.assertIn(bad.stream.stream_id, end.resets())
        self.assertEqual(bad.events[1:], [("error", 502, "tunnel-error")])
        end.answer(good.stream.stream_id, [(b":status", b"200")])
        self.assertEqual(good.names(), ["opened", "response", "ended"])
        self.assertEqual(end.factory.stream_errors, 1)
        self.assertFalse(end.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HPACKTests(Base):
    SECRETS = [
        (b"authorization", b"Bearer secret-token"),
        (b"cookie", b"session=secret"),
        (b"proxy-authorization", b"Basic c2VjcmV0"),
        (b"x-appproxy-jwt-assertion", b"eyJhbGciOi.secret.sig"),
        (b"x-request-id", b"0123456789abcdef"),
    ]

    def test_secrets_never_indexed(self) -> None:
        """
        Secrets and request ids are sent as never-indexed literals (the peer
        decodes them as such) and never enter the shared dynamic table;
        ordinary fields still do.
        """
        end = self.end(capacity=5)
        a, b = FakeExchange(), FakeExchange()
        fields = [*self.SECRETS, (b"accept-language", b"fr")]
        self.put(
            end, job(b"/a", headers=fields, exchange=a), job(b"/b", headers=fields, exchange=b)
        )
        received = [e for e in end.events if isinstance(e, RequestReceived) and e.stream_id > 1]
        self.assertEqual(len(received), 2)
        for event in received:
            for header in event.headers:
                if (header[0], header[1]) in self.SECRETS:
                    self.assertIsInstance(header, NeverIndexedHeaderTuple)
        table = [
            (bytes(n), bytes(v)) for n, v in end.proto.conn.encoder.header_table.dynamic_entries
        ]
        for name, _value in self.SECRETS:
            self.assertNotIn(name, [n for n, _ in table])
        self.assertIn((b"accept-language", b"fr"), table)
