"""llm-monitor core, one folder per concern (docs/architecture.md): ingest, scoring, windows,
storage, policy, cli, devtools; shared basics (config, errors, metrics) at the top.

Free of any streaming framework so it can be driven by faust workers, tests and benchmarks alike.
"""

__version__ = "0.1.0"
