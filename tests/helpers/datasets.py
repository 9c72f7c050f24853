"""Small real datasets cut from ../shared/data for tests."""

from __future__ import annotations

import shutil
from pathlib import Path


def lfw_subset(lfw: Path, dest: Path, people: int, per_person: int, singles: int = 0) -> Path:
    """``people`` LFW people with at least ``per_person`` photos (the first ``per_person`` of
    each) plus ``singles`` people with one photo, copied to ``dest``."""
    chosen, lonely = [], []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        n = len(list(person.iterdir()))
        if n >= per_person and len(chosen) < people:
            chosen.append(person)
        elif n == 1 and len(lonely) < singles:
            lonely.append(person)
        if len(chosen) == people and len(lonely) == singles:
            break
    for person, k in [(p, per_person) for p in chosen] + [(p, 1) for p in lonely]:
        (dest / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:k]:
            shutil.copy(f, dest / person.name / f.name)
    return dest
