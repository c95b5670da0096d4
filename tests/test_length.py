"""
Tests for L{appproxy.http.length}: the C{Content-Length} the connector
sends with a backend's response.  (Through the daemons:
L{tests.test_daemon_responses}.)
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.length import (
    NO_BODY_STATUSES,
    parse_content_length,
    response_content_length,
)

lengths = st.integers(0, 2**70)
ows = st.text(" \t", max_size=2)


@st.composite
def spelled(draw: st.DrawFn, length: int) -> bytes:
    """C{length} as a Content-Length element may spell it: zeros, whitespace."""
    zeros = "0" * draw(st.integers(0, 3))
    return (draw(ows) + zeros + str(length) + draw(ows)).encode("ascii")


@st.composite
def field_values(draw: st.DrawFn, length: int) -> list[bytes]:
    """Field values that all state C{length}: repeated fields, list forms."""
    values = []
    for _ in range(draw(st.integers(1, 3))):
        elements = draw(st.lists(spelled(length), min_size=1, max_size=3))
        values.append(b",".join(elements))
    return values


class ParseContentLengthTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertIsNone(parse_content_length([]))
        self.assertEqual(parse_content_length([b"0"]), 0)
        self.assertEqual(parse_content_length([b"42"]), 42)
        self.assertEqual(parse_content_length([b" 42\t"]), 42)
        self.assertEqual(parse_content_length([b"42, 42", b"042"]), 42)
        for values in [
            [b""],
            [b" "],
            [b"-1"],
            [b"+1"],
            [b"1e3"],
            [b"0x10"],
            [b"five"],
            [b"4 2"],
            [b"42,"],
            [b"42", b""],
            [b"\xd9\xa4"],
            [b"5", b"6"],
            [b"5, 6"],
        ]:
            with self.assertRaises(ValueError, msg=values):
                parse_content_length(values)

    @given(lengths.flatmap(lambda n: st.tuples(st.just(n), field_values(n))))
    def test_agreeing_values(self, case: tuple[int, list[bytes]]) -> None:
        """However repeated or spelled, one number is that number."""
        length, values = case
        self.assertEqual(parse_content_length(values), length)

    @given(lengths, lengths, st.data())
    def test_conflicting_values(self, one: int, other: int, data: st.DataObject) -> None:
        """Two different numbers, in one field value or two, are refused."""
        assume(one != other)
        first = data.draw(field_values(one))
        second = data.draw(field_values(other))
        with self.assertRaises(ValueError):
            parse_content_length(first + second)
        with self.assertRaises(ValueError):
            parse_content_length([first[0] + b"," + second[0]])

    @given(
        lengths.flatmap(field_values),
        st.binary(max_size=6).filter(lambda b: not b.strip(b" \t").isdigit()),
        st.data(),
    )
    def test_malformed_element(self, values: list[bytes], bad: bytes, data: st.DataObject) -> None:
        """An element that is not 1*DIGIT (with whitespace around) is refused."""
        assume(b"," not in bad)
        index = data.draw(st.integers(0, len(values)))
        with self.assertRaises(ValueError):
            parse_content_length([*values[:index], bad, *values[index:]])


class ResponseContentLengthTests(SynchronousTestCase):
    @given(st.sampled_from([b"GET", b"POST", b"HEAD"]), lengths, st.booleans())
    def test_no_body_statuses(self, method: bytes, length: int, framed: bool) -> None:
        """A 204 or 304 (or 1xx) never gets a length, whatever it declared."""
        declared = [b"%d" % length, b"garbage"]
        for status in [*NO_BODY_STATUSES, 100, 103]:
            self.assertIsNone(
                response_content_length(status, method, declared, length if framed else None)
            )

    @given(st.sampled_from([200, 206, 404, 500]), lengths, lengths)
    def test_framed_length(self, status: int, length: int, other: int) -> None:
        """
        Not for HEAD: the length the HTTP client framed the body by (the
        declared values it already checked are not looked at again).
        """
        for method in [b"GET", b"POST", b"head"]:
            self.assertEqual(response_content_length(status, method, [], length), length)
            self.assertIsNone(response_content_length(status, method, [], None))
        self.assertEqual(response_content_length(status, b"GET", [b"%d" % other], length), length)

    @given(
        st.sampled_from([200, 404]),
        lengths.flatmap(lambda n: st.tuples(st.just(n), field_values(n))),
    )
    def test_head(self, status: int, case: tuple[int, list[bytes]]) -> None:
        """For HEAD, the declared length, checked."""
        length, values = case
        self.assertEqual(response_content_length(status, b"HEAD", values, 0), length)
        self.assertIsNone(response_content_length(status, b"HEAD", [], 0))
        with self.assertRaises(ValueError):
            response_content_length(status, b"HEAD", [*values, b"%d" % (length + 1)], 0)
