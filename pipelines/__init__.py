"""The Prefect flows (``pipelines.flow``).

A run sends no usage telemetry unless the user asks for it: the temporary Prefect server a flow
starts when no ``PREFECT_API_URL`` is set (``PREFECT_SERVER_ANALYTICS_ENABLED=false``; offline
it logged "Failed to send telemetry" errors on every run), and Prefect's client, which printed
a telemetry notice on a terminal's first run (``DO_NOT_TRACK=true``, which MLflow's client in
the stage processes honours too). A value the user set is kept. Set here, before Prefect is
imported: Prefect reads its settings once."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
