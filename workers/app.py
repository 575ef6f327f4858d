"""The Celery app of the workers: one queue per tier, settings suited to long tasks.

:func:`create_celery` builds a configured app from :class:`~dispatcher.settings.Settings`.
:func:`lazy_celery` builds the module-level app that ``celery -A workers ...`` finds
(``workers.celery``): it reads the settings and the policy in Celery's ``on_configure``
signal, i.e. when a worker (or Flower, or ``celery inspect``) first needs its
configuration, never at import.

Reliability (DESIGN §5):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a turn lost with its worker is
  redelivered; :mod:`workers.claim` makes the redelivery harmless;
* ``worker_prefetch_multiplier = 1``: a worker reserves no more turns than it has
  threads, so a busy worker does not hoard turns another could start now;
* the broker's ``visibility_timeout`` is above the longest turn (the longest tier
  deadline plus the slowest provider's ``total_s``, plus five minutes), so Redis does not
  redeliver a turn that is still streaming;
* JSON only; no result backend (results are events on the turn's stream);
* task events off by default (Flower enables them with ``celery control enable_events``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals  # type: ignore[import-untyped]
from kombu.entity import Exchange, Queue

from dispatcher.policy import Policy, load_policy
from dispatcher.settings import Settings, get_settings
from workers import tasks
from workers.resources import host

log = logging.getLogger(__name__)

#: Threads per worker process: each holds one turn, blocked on the event loop.
DEFAULT_CONCURRENCY = 256
#: Margin of the broker's visibility timeout over the longest possible turn.
VISIBILITY_MARGIN_S = 300


def visibility_timeout(policy: Policy) -> int:
    """Seconds before Redis redelivers an unacked turn: above the longest possible turn."""
    longest = 0.0
    for tier in policy.tiers.values():
        totals = [
            policy.providers[policy.models[m].provider].timeouts.total_s
            for m in tier.models
            if m in policy.models and policy.models[m].provider in policy.providers
        ]
        longest = max(longest, tier.deadline_ms / 1000 + max(totals, default=0.0))
    return int(longest) + VISIBILITY_MARGIN_S


def celery_config(settings: Settings, policy: Policy) -> dict[str, Any]:
    """The Celery settings of the workers, from the process settings and the policy."""
    # Each queue on its own direct exchange of the same name: what Celery declares for a
    # queue named only by ``send_task(queue=...)``, so any producer routes the same way.
    names = [policy.queue(tier) for tier in policy.tiers]
    queues = [
        Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
        for name in names
    ]
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility_timeout(policy)},
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": queues,
        "task_default_queue": policy.queue(policy.default_tier),
        "task_create_missing_queues": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": False,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": DEFAULT_CONCURRENCY,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # threads cannot be interrupted; a turn survives a broker blip and is acked after
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": True,
    }


def configure_celery(app: Celery, settings: Settings,
                     identity: dict[str, Any] | None = None) -> None:
    """Apply the workers' configuration to ``app`` and remember ``settings`` for startup."""
    policy = load_policy(settings.policy)
    app.conf.update(celery_config(settings, policy))
    host.configure(settings, identity or {"engine": "celery"})


def create_celery(settings: Settings, identity: dict[str, Any] | None = None) -> Celery:
    """A configured app with the ``dispatcher.run_turn`` task registered."""
    app = Celery("workers", set_as_current=False)
    configure_celery(app, settings, identity)
    tasks.register(app)
    _connect_lifecycle()
    return app


def lazy_celery() -> Celery:
    """The module-level app: configured from the environment when first configured."""
    app = Celery("workers")

    def on_configure(sender: Celery, **_: Any) -> None:
        configure_celery(sender, get_settings())

    app.on_configure.connect(on_configure, weak=False)
    tasks.register(app)
    _connect_lifecycle()
    return app


# -- the process loop follows the worker's life ----------------------------------------------


def _is_prefork(worker: Any) -> bool:
    from celery.concurrency import get_implementation  # type: ignore[import-untyped]
    from celery.concurrency.prefork import (  # type: ignore[import-untyped]
        TaskPool as PreforkPool,
    )

    pool = get_implementation(getattr(worker, "pool_cls", None) or "prefork")
    return isinstance(pool, type) and issubclass(pool, PreforkPool)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    # httpx logs every request at INFO: one line per provider call is noise, not news
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # prefork children start their own loop after the fork (worker_process_init)
    if not _is_prefork(sender):
        host.start()


def _on_process_init(**_: Any) -> None:
    host.start()


def _on_shutdown(**_: Any) -> None:
    host.stop()


def _connect_lifecycle() -> None:
    signals.worker_init.connect(_on_worker_init, dispatch_uid="workers.loop.init")
    signals.worker_process_init.connect(_on_process_init, dispatch_uid="workers.loop.child")
    signals.worker_shutdown.connect(_on_shutdown, dispatch_uid="workers.loop.stop")
    signals.worker_process_shutdown.connect(_on_shutdown, dispatch_uid="workers.loop.stop-child")
