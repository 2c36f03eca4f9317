"""LLM-as-judge: grading sampled events against a rubric, and pairwise canary-vs-stable.

- ``rubric``: the prompts (rubric template, verbosity control, version) and the judge's family;
- ``parsing``: the strict output formats, parsed without ever raising;
- ``client``: the OpenAI-compatible judge endpoint, deterministic sampling, the hourly budget;
- ``pairwise``: canary/stable pairing by prompt, both position orders, per-window win rates;
- ``bootstrap``: the paired bootstrap interval and the promotion gate;
- ``evaluator``: the bounded queue and workers the ``judge`` role (streams/judge.py) runs.
"""
