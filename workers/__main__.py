"""``python -m workers --tier fast``: see :mod:`workers.cli`."""

from workers.cli import main

raise SystemExit(main())
