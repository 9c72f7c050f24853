"""What hard-linking saves in ``siamese data add``: placing a dataset in ``data/<name>`` by hard
links against copying it (``siamese.stages.data_add._place``), and the whole ``data add`` (read
and check every image, place, ``dvc add``) in a fresh project copy, to put the saving in
proportion. The source is first copied to a temporary folder, so the shared data is never linked.

Prints JSON: files, bytes, seconds to place by links and by copies (best of ``--repeat``), and
seconds of the whole ``data add`` (``--on-small-identity skip``, as LFW needs)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, make_project, tool_env

from siamese.stages.data_add import _place


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        best = min(best, fn())
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "lfw" / "lfw")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "source"
        shutil.copytree(args.data, source)
        files = [p for p in source.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)

        def place(link: bool) -> float:
            target = tmp / "placed"
            shutil.rmtree(target, ignore_errors=True)
            t = time.perf_counter()
            _place(source, target, link=link)
            return time.perf_counter() - t

        linked, copied = (
            _best(lambda: place(True), args.repeat),
            _best(lambda: place(False), args.repeat),
        )
        project = make_project(tmp / "project")
        cmd = [str(Path(sys.executable).with_name("siamese")), "data", "add", str(source)]
        t = time.perf_counter()
        out = subprocess.run(
            [*cmd, "--name", "lfw", "--on-small-identity", "skip"],
            cwd=project,
            env=tool_env(),
            capture_output=True,
            text=True,
        )
        whole = time.perf_counter() - t
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
    print(
        json.dumps(
            {
                "data": str(args.data),
                "files": len(files),
                "bytes": size,
                "place_by_links_s": round(linked, 3),
                "place_by_copies_s": round(copied, 3),
                "data_add_s": round(whole, 1),
                "data_add_said": out.stdout.strip(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
