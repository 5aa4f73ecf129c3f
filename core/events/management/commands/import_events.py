from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core.events.importing import ImportFormatError, ImportReport, events_import, parse_mapping


class Command(BaseCommand):
    help = (
        "Backfill events from a CSV or JSON-lines file through the API's validation, via COPY on "
        "PostgreSQL. A MovieLens ratings.csv works as is. Re-running skips stored rows."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=["auto", "csv", "jsonl"], default="auto")
        parser.add_argument(
            "--map",
            default="",
            help="field=column pairs, comma-separated, e.g. "
            "'user_id=userId,item_id=movieId,value=rating,timestamp=timestamp'",
        )
        parser.add_argument("--type", default=None, help="event type for rows without one")
        parser.add_argument("--chunk-size", type=int, default=20_000, help="rows a transaction")
        parser.add_argument(
            "--writers", type=int, default=2, help="threads storing chunks (0: store inline)"
        )
        parser.add_argument("--max-errors", type=int, default=20, help="bad rows to print")

    def handle(self, *args, file: Path, **options) -> None:
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        if options["chunk_size"] < 1 or options["writers"] < 0:
            raise CommandError("--chunk-size must be at least 1 and --writers at least 0")
        try:
            mapping = parse_mapping(options["map"])
            report = events_import(
                path=file,
                file_format=options["format"],
                mapping=mapping,
                default_type=options["type"],
                chunk_size=options["chunk_size"],
                writers=options["writers"],
                max_errors=options["max_errors"],
                progress=self._progress if options["verbosity"] > 1 else None,
            )
        except ImportFormatError as exc:
            raise CommandError(f"{file}: {exc}") from exc
        for error in report.errors:
            where = f" ({error.field})" if error.field else ""
            self.stderr.write(f"line {error.index}{where}: {error.code}: {error.message}")
        self.stdout.write(
            f"{file}: read {report.read}, accepted {report.accepted}, "
            f"duplicates {report.duplicates}, rejected {report.rejected} "
            f"in {report.seconds:.2f} s ({report.rate:,.0f} events/s) via {report.path}"
        )

    def _progress(self, report: ImportReport) -> None:
        self.stdout.write(f"  ... {report.read} rows, {report.rate:,.0f} events/s")
