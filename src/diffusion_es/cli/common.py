"""Small helpers shared by the subcommands: JSON output, seed ranges, parsing of lambda options."""

from __future__ import annotations

import json
import sys

from ..errors import UsageError


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=float)
    sys.stdout.write("\n")


def parse_seeds(text: str) -> list:
    """'0-1999' -> [0..1999]; '3,5,7' -> [3, 5, 7]; '0-9,20' -> both. Ranges include both ends."""
    seeds = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"bad --seeds {text!r}: use a range like 0-1999, a list like 1,2,3, or both (0-9,20)") from None
    if not seeds:
        raise UsageError("--seeds is empty: give at least one seed, e.g. --seeds 0-99")
    if any(s < 0 for s in seeds):
        raise UsageError("--seeds must be non-negative integers")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed: each seed must appear once")
    return seeds
