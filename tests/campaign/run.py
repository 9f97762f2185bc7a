"""Run the reliability campaign and print its table: ``python tests/campaign/run.py [--long] [NAME ...]``.

CI runs the short form through pytest (tests/campaign/test_campaign.py); the
long one is the README's command, and its table goes in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import SCENARIOS, Result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--long", action="store_true", help="the full campaign (tens of minutes), not CI's short form")
    ap.add_argument("names", nargs="*", choices=[[], *SCENARIOS], help="scenarios to run (default: all)")
    args = ap.parse_args()
    size = "long" if args.long else "short"
    results: list[tuple[Result, float]] = []
    for name in args.names or list(SCENARIOS):
        work = Path(tempfile.mkdtemp(prefix=f"tierfs-campaign-{name}-"))
        t0 = time.monotonic()
        try:
            res = SCENARIOS[name](work, size)
        except Exception as exc:  # a scenario that could not run is a failure of the campaign
            res = Result(name)
            res.fail(f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append((res, time.monotonic() - t0))
        print(f"{res.name}: {'ok' if res.ok else 'FAILED'} in {time.monotonic() - t0:.0f} s", flush=True)
    print()
    print(f"| scenario ({size}) | runs | checks | failures | figures | seconds |")
    print("|---|---:|---:|---:|---|---:|")
    for res, secs in results:
        figures = "; ".join(f"{k}: {v}" for k, v in res.figures.items()) or "-"
        print(f"| {res.name} | {res.runs} | {res.checks} | {len(res.failures)} | {figures} | {secs:.0f} |")
    for res, _ in results:
        for f in res.failures[:10]:
            print(f"FAIL {res.name}: {f}")
    return 0 if all(r.ok for r, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
