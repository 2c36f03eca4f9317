"""Tools around the monitor: the demo, traffic, the bundled broker, worker processes, probes."""
