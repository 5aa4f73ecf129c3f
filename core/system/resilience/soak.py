"""`make soak`: steady load on a private stack for a long time, watching memory.

    python -m core.system.resilience.soak [--seconds 1800] [--sample-seconds 30] [--json]

(`SOAK_SECONDS` and `SOAK_SAMPLE_SECONDS` in the environment set the defaults.) The private stack
of `core.system.resilience.stack` gets recommendations GETs and event POSTs at a fixed rate (12
and 6 per second unless told); every `--sample-seconds` the resident memory (RSS) of each web
worker, the Celery worker (main process and pool children together) and the model server is
sampled. It prints, per process, RSS at the start of the measured window and at the end, and the
growth slope (least squares over the window, MB per hour).

The first `--warmup-fraction` (20 %) of the run is left out of the window: caches, connection
pools and the allocator's arenas fill up there by design. A process fails the soak when its RSS
grew over the window by more than `--max-growth-mb` (default 32 MB) AND its slope projects more
than that again per hour; steady memory with noise passes, a leak that keeps climbing does not.
The run also fails on any 5xx. Exit code 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from core.recommendations.bench_serve import load_average

from .load import Load, stack_catalog
from .stack import PrivateStack, say


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var * 3600


def judge(
    series: dict[str, list[tuple[float, float]]], *, warmup_seconds: float, max_growth_mb: float
) -> list[dict]:
    rows = []
    for name, samples in sorted(series.items()):
        window = [sample for sample in samples if sample[0] >= warmup_seconds] or samples
        start_mb, end_mb = window[0][1], window[-1][1]
        slope = slope_mb_per_hour(window)
        growth = end_mb - start_mb
        rows.append(
            {
                "process": name,
                "rss_first_mb": round(samples[0][1], 1),
                "rss_window_start_mb": round(start_mb, 1),
                "rss_end_mb": round(end_mb, 1),
                "rss_max_mb": round(max(m for _, m in samples), 1),
                "growth_mb": round(growth, 1),
                "slope_mb_per_hour": round(slope, 1),
                "samples": len(samples),
                "ok": not (growth > max_growth_mb and slope > max_growth_mb),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 1800))
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=float(os.environ.get("SOAK_SAMPLE_SECONDS", 30))
    )
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--max-growth-mb", type=float, default=32.0)
    parser.add_argument("--recommendations-rate", type=float, default=12.0)
    parser.add_argument("--event-rate", type=float, default=6.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 10 <= args.seconds <= 4 * 3600:
        parser.error("--seconds must be from 10 to 14400 (the run is bounded)")

    load_before = load_average()
    with PrivateStack() as stack:
        users, items = stack_catalog(stack.sql)
        load = Load(
            stack.ports["web"], stack.api_key, users, items,
            recommendations_rate=args.recommendations_rate, event_rate=args.event_rate,
        )  # fmt: skip
        load.set_phase("soak")
        series: dict[str, list[tuple[float, float]]] = {}
        load_samples = []
        started = time.monotonic()
        load.start()
        say(f"soak: {args.seconds:.0f} s, RSS sampled every {args.sample_seconds:.0f} s")
        next_sample = started
        while True:
            now = time.monotonic()
            if now >= next_sample:
                for name, mb in stack.process_rss_mb().items():
                    series.setdefault(name, []).append((now - started, mb))
                load_samples.append(os.getloadavg()[0])
                next_sample += args.sample_seconds
                elapsed = now - started
                if int(elapsed) % 300 < args.sample_seconds:
                    figures = load.figures("soak")
                    say(
                        f"{elapsed:.0f} s: {figures.requests} requests, statuses "
                        f"{dict(figures.statuses)}, load {load_average()}"
                    )
            if now - started >= args.seconds:
                break
            time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        load.stop()
        for name, mb in stack.process_rss_mb().items():
            series.setdefault(name, []).append((time.monotonic() - started, mb))
        figures = load.figures("soak")
        accepted = load.accepted_ids("soak")
        stored = _count_stored(stack, accepted)

    rows = judge(
        series,
        warmup_seconds=args.seconds * args.warmup_fraction,
        max_growth_mb=args.max_growth_mb,
    )
    report = {
        "seconds": args.seconds,
        "rates_per_second": {
            "recommendations": args.recommendations_rate,
            "events": args.event_rate,
        },
        "requests": figures.requests,
        "statuses": {str(k): v for k, v in sorted(figures.statuses.items())},
        "sources": dict(figures.sources),
        "events_accepted": len(accepted),
        "events_stored": stored,
        "processes": rows,
        "max_growth_mb": args.max_growth_mb,
        "load_average_before": load_before,
        "load_average_mean_1m": round(sum(load_samples) / max(1, len(load_samples)), 2),
        "load_average_after": load_average(),
    }
    failed = (
        [row["process"] for row in rows if not row["ok"]]
        + (["5xx answers"] if figures.server_errors else [])
        + (["events lost"] if stored != len(accepted) else [])
    )
    report["failed"] = failed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if failed else 0


def _count_stored(stack: PrivateStack, event_ids: list[str]) -> int:
    rows = stack.sql("SELECT count(*) FROM events_event WHERE event_id = ANY(%s)", [event_ids])
    return int(rows[0][0])


def print_report(report: dict) -> None:
    minutes = report["seconds"] / 60
    print(
        f"\nSoak: {minutes:.0f} min at {report['rates_per_second']['recommendations']:g} "
        f"recommendations/s + {report['rates_per_second']['events']:g} events/s; "
        f"{report['requests']:,} requests, statuses {report['statuses']}; events accepted "
        f"{report['events_accepted']:,}, stored {report['events_stored']:,}; recommendation "
        f"sources {report['sources']}\n"
    )
    print(
        "| process | RSS first MB | RSS after warm-up MB | RSS end MB | max MB | growth MB "
        "| slope MB/h | |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in report["processes"]:
        print(
            f"| {row['process']} | {row['rss_first_mb']} | {row['rss_window_start_mb']} | "
            f"{row['rss_end_mb']} | {row['rss_max_mb']} | {row['growth_mb']} | "
            f"{row['slope_mb_per_hour']} | {'ok' if row['ok'] else 'GROWS'} |"
        )
    print(
        f"\nthreshold: growth over the window > {report['max_growth_mb']:g} MB and slope > "
        f"{report['max_growth_mb']:g} MB/h; load average before {report['load_average_before']}, "
        f"mean {report['load_average_mean_1m']}, after {report['load_average_after']}"
    )
    print("FAILED: " + ", ".join(report["failed"]) if report["failed"] else "passed")


if __name__ == "__main__":
    sys.exit(main())
