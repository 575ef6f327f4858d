"""The load benchmark (``dispatcher bench``): what the dispatcher adds to a streamed turn.

* :mod:`~dispatcher.bench.client`: the lean streaming HTTP client both paths use;
* :mod:`~dispatcher.bench.load`: one phase of closed-loop users;
* :mod:`~dispatcher.bench.procs`: CPU and memory of the processes, from ``/proc``;
* :mod:`~dispatcher.bench.stats`, :mod:`~dispatcher.bench.targets`: numbers (pure);
* :mod:`~dispatcher.bench.runner`: :func:`run_load_bench`, the whole run;
* :mod:`~dispatcher.bench.report`, :mod:`~dispatcher.bench.command`: table, plot, CLI.
"""

from dispatcher.bench.runner import LoadBenchConfig, run_load_bench

__all__ = ["LoadBenchConfig", "load_command", "run_load_bench"]


def __getattr__(name: str) -> object:
    # the typer command pulls in typer and rich; import it only when asked for
    if name == "load_command":
        from dispatcher.bench.command import load_command

        return load_command
    raise AttributeError(name)
