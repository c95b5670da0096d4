"""
What-if patches for benchmark experiments only (never for production).

The harness puts this directory on the daemons' PYTHONPATH when asked for
patches (C{--whatif NAME,...}, environment variable C{APPPROXY_BENCH_WHATIF}),
so that the effect of a candidate optimisation can be measured before anyone
changes appproxy itself.  Each patch stands for a change proposed in
docs/performance.md:

  - C{frame-repr}: h2's C{H2Connection._receive_frame} evaluates
    C{repr(frame)} for a trace log line on every frame received; for a DATA
    frame hyperframe's C{Frame._body_repr} copies the payload
    (C{serialize_body}) and hex-encodes all of it.  The patch gives DATA
    frames a constant-time repr.
  - C{no-access-log}: the service's access log line per request
    (C{ProxyHTTPFactory.log}) is dropped.
  - C{no-h2-validation}: the tunnel's H2Connection does not validate inbound
    and outbound header blocks (both ends are appproxy).

And one that undoes a change made, to measure it beside the code as it is
(C{benchmarks/ab.py}):

  - C{keep-cycles}: a finished request keeps its job, relay and tunnel
    stream, which refer back to it, as it did: every request leaves a
    reference cycle for the garbage collector.
  - C{no-admit-memo}: the gate decides every signed-in request anew, without
    the admissions of this second (L{appproxy.gate.memo}).
  - C{priority-tree}: an HTTP/2 client's streams are scheduled by
    twisted.web's priority tree, not L{appproxy.frontend.h2_schedule}.
  - C{no-cookie-memo}: every request's C{Cookie} value is read anew
    (L{appproxy.http.cookies.parse_cookies}, and appproxy's cookies taken out
    of it, L{appproxy.identity.headers.strip_appproxy_cookies}).

And ones that change nothing but observe:

  - C{tracemalloc}: trace Python allocations; on SIGUSR2 the process writes a
    snapshot to C{tracemalloc.N} (N = 1, 2, ...) in its working directory, which
    C{idle_memory.py --tracemalloc} compares.
  - C{cprofile}: the first SIGUSR2 starts cProfile, the next one stops it
    and writes the statistics to C{cprofile.PID} in the working directory
    (C{throughput.py --cprofile N}: Python calls per request).
"""

from __future__ import annotations

import os
import sys

_PATCHES = {p.strip() for p in os.environ.get("APPPROXY_BENCH_WHATIF", "").split(",") if p.strip()}


def _frame_repr() -> None:
    from hyperframe.frame import DataFrame

    def _body_repr(self: DataFrame) -> str:
        return f"<{len(self.data)} bytes>"

    DataFrame._body_repr = _body_repr  # type: ignore[method-assign]


def _no_access_log() -> None:
    from appproxy.frontend import proxy

    def log(self: object, request: object) -> None:
        """Log nothing."""

    proxy.ProxyHTTPFactory.log = log  # type: ignore[method-assign,assignment]


def _no_h2_validation() -> None:
    from h2.config import H2Configuration

    import appproxy.tunnel.base as tunnel

    def config(**kwargs: object) -> H2Configuration:
        kwargs["validate_inbound_headers"] = False
        kwargs["validate_outbound_headers"] = False
        return H2Configuration(**kwargs)  # type: ignore[arg-type]

    tunnel.H2Configuration = config  # type: ignore[assignment,misc]


def _keep_cycles() -> None:
    from appproxy.frontend.exchange import ExchangeRequest

    def _unlink(self: object, keep_stream: bool = False) -> None:
        """Keep everything."""

    ExchangeRequest._unlink = _unlink  # type: ignore[method-assign]


def _no_admit_memo() -> None:
    # The gate decides every request anew, as before its memo.
    from appproxy.gate.memo import AdmitMemo

    AdmitMemo.get = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


def _no_cookie_memo() -> None:
    # Every request's Cookie value read (and appproxy's cookies taken out) anew.
    from appproxy.http import cookies
    from appproxy.identity import headers

    cookies._one_value = cookies._one_value.__wrapped__  # type: ignore[attr-defined]
    headers._without_appproxy_cookies = headers._without_appproxy_cookies.__wrapped__  # type: ignore[attr-defined]


def _priority_tree() -> None:
    # twisted.web's priority tree schedules an HTTP/2 client's streams again.
    from priority import PriorityTree  # type: ignore[import-untyped]

    from appproxy.frontend import h2_guard

    h2_guard.RoundRobin = PriorityTree  # type: ignore[misc]


def _tracemalloc() -> None:
    import gc
    import signal
    import tracemalloc

    tracemalloc.start(4)
    count = [0]

    def dump(signum: int, frame: object) -> None:
        count[0] += 1
        path = f"tracemalloc.{count[0]}"
        # Closed connections' cycles first: not counted against the open ones.
        gc.collect()
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, dump)


def _cprofile() -> None:
    import cProfile
    import signal

    state: dict[str, cProfile.Profile] = {}
    # Where the daemon started: it may change directory later.
    out = os.path.join(os.getcwd(), f"cprofile.{os.getpid()}")

    def toggle(signum: int, frame: object) -> None:
        profiler = state.pop("on", None)
        if profiler is None:
            state["on"] = profiler = cProfile.Profile()
            profiler.enable()
        else:
            profiler.disable()
            profiler.dump_stats(out + ".tmp")
            os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR2, toggle)


_ALL = {
    "frame-repr": _frame_repr,
    "no-access-log": _no_access_log,
    "no-h2-validation": _no_h2_validation,
    "keep-cycles": _keep_cycles,
    "no-admit-memo": _no_admit_memo,
    "no-cookie-memo": _no_cookie_memo,
    "priority-tree": _priority_tree,
    "tracemalloc": _tracemalloc,
    "cprofile": _cprofile,
}

for _name in sorted(_PATCHES):
    if _name not in _ALL:
        sys.stderr.write(f"whatif: unknown patch {_name!r}\n")
        continue
    _ALL[_name]()
    sys.stderr.write(f"whatif: applied {_name}\n")
