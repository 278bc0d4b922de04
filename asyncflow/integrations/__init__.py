"""Integrations with other libraries, each behind its own optional extra.

- :mod:`asyncflow.integrations.opentelemetry` (``pip install 'asyncflow[otel]'``):
  traces and metrics of runs.
- :mod:`asyncflow.integrations.fastapi` (``pip install 'asyncflow[fastapi]'``):
  a lifespan, a dependency and a runs router with live events and a runs page.
- :mod:`asyncflow.integrations.logging` (no extra): asyncflow's log records in
  the standard library's :mod:`logging`.
"""
