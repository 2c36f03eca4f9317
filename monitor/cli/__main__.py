"""``python -m monitor.cli``: how the demo and tests start a worker process."""

from monitor.cli import main

main()
