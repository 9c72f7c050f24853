"""One function per pipeline stage. DVC, Prefect, the CLI and the tests all call these."""
