"""AT&T faces verification benchmark: ``siamese run --preset att_faces`` trains on 20 people
(17 for training, 3 for early stopping and calibration) and verifies pairs of the other 10.
Prints JSON (EER with its CI, AUC, TAR@FAR, training time); the run is in the project's MLflow
experiment ``benchmark-att-faces``.

    python benchmarks/att_faces.py [--data DIR] [--set key=value ...] [--keep DIR]
"""

from __future__ import annotations

from _pipeline import verification_benchmark

if __name__ == "__main__":
    verification_benchmark(
        name="att_faces",
        preset="att_faces",
        default_data="att_faces",
        goal={"eer": 0.01},
        report=lambda m: {},
    )
