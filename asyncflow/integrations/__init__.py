"""Integrations with other libraries, each behind its own optional extra.

- :mod:`asyncflow.integrations.opentelemetry` (``pip install 'asyncflow[otel]'``):
  traces and metrics of runs.
"""
