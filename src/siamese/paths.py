"""Where each stage reads and writes, relative to the project root. dvc.yaml declares the same
paths; keeping them in one module keeps the CLI, DVC and the tests in agreement."""

from pathlib import Path

ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
PAIRS = ARTIFACTS / "pairs"
TRAIN = ARTIFACTS / "train"
TRAIN_METRICS = ARTIFACTS / "train_metrics.json"
CALIBRATION = ARTIFACTS / "calibrate"
EVALUATION = ARTIFACTS / "evaluate"
REGISTRATION = ARTIFACTS / "register"
# not a DVC output: promotion depends on the registry's state, not only on files
PROMOTION = ARTIFACTS / "promote"
PARAMS = Path("params.yaml")
