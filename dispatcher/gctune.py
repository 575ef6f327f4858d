"""Garbage-collector settings for the long-running hot-path processes (ingress, workers).

CPython's cyclic collector runs a full (generation 2) pass over every tracked object once
enough survivors pile up; in a process holding its imports, policy, router tables and
pools (a few hundred thousand objects) such a pass stops the event loop for tens of
milliseconds, and every stream of the process waits: a tail-latency spike on the first
token of whatever turn arrives meanwhile. :func:`tune` does what large Python services do:

* ``gc.freeze()`` once the process has started: everything allocated so far (modules,
  the policy, compiled tables, pools) moves to a permanent generation that collections
  no longer scan;
* a higher generation-0 threshold, so the short-lived objects of a turn (dicts of
  events, JSON documents) die by reference counting before a collection is even due.

Reference counting still frees nearly everything at once; the collector only ever finds
cycles, and there are few on these paths.
"""

from __future__ import annotations

import gc

#: allocations (minus deallocations) between generation-0 collections (CPython: 700)
GEN0_THRESHOLD = 50_000


def tune() -> None:
    """Freeze the startup heap and space the collections out (call once started)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
