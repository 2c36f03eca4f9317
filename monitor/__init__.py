"""llm-monitor core: event contract, config, pipeline, storage, metrics and CLI.

Free of any streaming framework so it can be driven by faust workers, tests and benchmarks alike.
"""

__version__ = "0.1.0"
