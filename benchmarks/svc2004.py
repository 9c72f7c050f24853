"""SVC2004 signature verification benchmark: ``siamese run --preset svc2004`` trains on 20
writers' genuine signatures (forgeries are never trained on) and tests on the other 10. Reports
the skilled-forgery EER (genuine vs forgeries of the same writer) apart from the random-forgery
EER (genuine vs other writers). Prints JSON; MLflow experiment ``benchmark-svc2004``.

    python benchmarks/svc2004.py [--data DIR] [--set key=value ...] [--keep DIR]
"""

from __future__ import annotations

from _pipeline import verification_benchmark

if __name__ == "__main__":
    verification_benchmark(
        name="svc2004",
        preset="svc2004",
        default_data="svc2004",
        goal={"eer_skilled_forgery": 0.10},
        report=lambda m: {
            "eer_skilled_forgery": m.get("eer_skilled_forgery"),
            "eer_random_forgery": m.get("eer_random_forgery"),
        },
    )
