"""The load benchmark (``dispatcher bench``): what the dispatcher adds to a streamed turn.

* :mod:`~dispatcher.bench.client`: the lean streaming HTTP client both paths use;
* :mod:`~dispatcher.bench.load`: one phase of closed-loop users;
* :mod:`~dispatcher.bench.procs`: CPU and memory of the processes, from ``/proc``;
* :mod:`~dispatcher.bench.stats`, :mod:`~dispatcher.bench.targets`: numbers (pure);
* :mod:`~dispatcher.bench.runner`: :func:`run_load_bench`, the whole run;
* :mod:`~dispatcher.bench.report`, :mod:`~dispatcher.bench.command`: table, plot, CLI.
"""

from typing import Any

__all__ = ["LoadBenchConfig", "load_command", "run_load_bench"]


def __getattr__(name: str) -> Any:
    # the runner pulls in httpx, redis and the stack launcher, the command typer and rich:
    # import them only when asked for, so that `dispatcher route` starts fast
    if name in ("LoadBenchConfig", "run_load_bench"):
        from dispatcher.bench import runner

        return getattr(runner, name)
    if name == "load_command":
        from dispatcher.bench.command import load_command

        return load_command
    raise AttributeError(name)
