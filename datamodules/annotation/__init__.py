"""LLM annotation of report text: the sidecars the data layer reads, produced offline.

One responsibility per file: ``prompts`` (prompts and output schemas), ``backends`` (an
OpenAI-compatible HTTP endpoint or a local transformers model), ``inputs`` (reports read from a
source's tables), ``runner`` (concurrency, retries, the resumable progress log), ``sidecars``
(atomic writes of the outputs), ``agreement`` (label agreement between two tables) and
``coverage`` (how much of a source a sidecar covers). The OpenAI-compatible server the tests and
``make bench-annotate`` run against is ``ctvlp.bench.chat_server``.
"""
