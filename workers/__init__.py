"""The Celery workers: one app, one queue per tier (DESIGN §5).

``celery -A workers worker -Q turns.fast`` finds :data:`celery` below (Celery looks for an
attribute ``app``, then ``celery``, of the module; ``workers.app`` is the submodule, so
the instance is named ``celery``). It reads its settings when the worker starts, not at
import. ``python -m workers --tier fast`` (:mod:`workers.cli`) is the usual way to start one.
"""

from workers.app import create_celery, lazy_celery

celery = lazy_celery()

__all__ = ["celery", "create_celery"]
