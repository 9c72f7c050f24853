"""The Prefect flows (``pipelines.flow``).

A run sends no usage telemetry unless the user asks for it: the temporary Prefect server a flow
starts when no ``PREFECT_API_URL`` is set (``PREFECT_SERVER_ANALYTICS_ENABLED=false``; offline
it logged "Failed to send telemetry" errors on every run), and Prefect's client, which printed
a telemetry notice on a terminal's first run (``DO_NOT_TRACK=true``, which MLflow's client in
the stage processes honours too). The temporary server gets two minutes to start, not Prefect's
20 s: on a busy 2-core machine it took longer and `make run` failed with "Timed out while
attempting to connect to ephemeral Prefect API server". A value the user set is kept. Set
here, before Prefect is imported: Prefect reads its settings once."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
