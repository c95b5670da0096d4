"""
The connector's request-body producer: tunnel DATA to the backend
connection, acknowledged only once the backend took it.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.request import StreamBodyProducer


class FakeStream:
    def __init__(self) -> None:
        self.acked = 0

    def acknowledge(self, n: int) -> None:
        self.acked += n

    def cancel_from_backend(self) -> None:
        pass

    def body_delivered(self) -> None:
        self.delivered = True

    def upload_started(self) -> None:
        pass

    def body_queued(self) -> None:
        pass


class StreamBodyProducerTests(SynchronousTestCase):
    def test_body_complete_before_start(self) -> None:
        """
        The whole body may arrive before the backend connection is ready:
        startProducing still returns a Deferred, already fired.
        """
        stream = FakeStream()
        producer = StreamBodyProducer(stream, 10)  # type: ignore[arg-type]
        producer.data(b"hello", 5)
        producer.data(b"world", 5)
        producer.end()
        self.assertEqual(stream.acked, 0)
        consumer = StringTransport()
        d = producer.startProducing(consumer)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), b"helloworld")
        self.assertEqual(stream.acked, 10)

    def test_paused_holds_acknowledgement(self) -> None:
        """
        While the backend connection is paused, data is held and not
        acknowledged, so the service's window stays shut.
        """
        stream = FakeStream()
        producer = StreamBodyProducer(stream, 6)  # type: ignore[arg-type]
        consumer = StringTransport()
        d = producer.startProducing(consumer)
        producer.data(b"ab", 2)
        self.assertEqual(stream.acked, 2)
        producer.pauseProducing()
        producer.data(b"cd", 2)
        producer.data(b"ef", 2)
        producer.end()
        self.assertEqual(stream.acked, 2)
        self.assertNoResult(d)
        producer.resumeProducing()
        self.assertEqual(consumer.value(), b"abcdef")
        self.assertEqual(stream.acked, 6)
        self.successResultOf(d)

    def test_fail(self) -> None:
        producer = StreamBodyProducer(FakeStream(), 6)  # type: ignore[arg-type]
        d = producer.startProducing(StringTransport())
        producer.fail("tunnel lost")
        self.failureResultOf(d, ConnectionError)
