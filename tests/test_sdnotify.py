"""
Tests for L{appproxy.daemon.sdnotify}.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon.sdnotify import notify


class NotifyTests(SynchronousTestCase):
    def listen(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def test_path_socket(self) -> None:
        # A short directory: AF_UNIX paths are limited to about 100 bytes.
        directory = tempfile.mkdtemp(prefix="sdn")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        sock = self.listen(path)
        self.addCleanup(os.unlink, path)
        for state in (b"READY=1", b"RELOADING=1", b"STOPPING=1\nSTATUS=bye"):
            self.assertTrue(notify(state, {"NOTIFY_SOCKET": path}))
            self.assertEqual(sock.recv(4096), state)

    def test_abstract_socket(self) -> None:
        name = f"appproxy-test-{os.getpid()}-{id(self)}"
        sock = self.listen("\0" + name)
        self.assertTrue(notify(b"READY=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def test_unset(self) -> None:
        self.assertFalse(notify(b"READY=1", {}))
        self.assertFalse(notify(b"READY=1", {"NOTIFY_SOCKET": ""}))

    def test_default_environ(self) -> None:
        """Without C{environ}, C{os.environ} is read."""
        saved = os.environ.pop("NOTIFY_SOCKET", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "NOTIFY_SOCKET", saved)
        self.assertFalse(notify(b"READY=1"))

    def test_errors_do_not_raise(self) -> None:
        directory = tempfile.mkdtemp(prefix="sdn")
        self.addCleanup(os.rmdir, directory)
        for address in (
            os.path.join(directory, "missing"),
            "/" + "x" * 200,
            "/with\0nul",
            "relative/path",
        ):
            self.assertFalse(notify(b"READY=1", {"NOTIFY_SOCKET": address}), address)
