"""`manage.py seed_agents [--force] [--dry-run]`: create or update the catalog's shared agents."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents.catalog import CatalogError, SeedReport, load_catalog, seed_catalog


class Command(BaseCommand):
    help = "Create or update the specialist agents of apps/agents/catalog/ (shared, no owner). Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="Also overwrite catalog agents that a user has edited."
        )
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; write nothing.")

    def handle(self, *args: object, **options: object) -> None:
        try:
            entries = load_catalog()
        except CatalogError as exc:
            raise CommandError(f"invalid catalog file: {exc}") from exc
        dry_run = bool(options["dry_run"])
        report = seed_catalog(entries=entries, force=bool(options["force"]), dry_run=dry_run)
        self._print(report, total=len(entries), dry_run=dry_run, verbose=int(options["verbosity"]) >= 2)

    def _print(self, report: SeedReport, *, total: int, dry_run: bool, verbose: bool) -> None:
        counts = (
            f"{len(report.created)} created, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged, {len(report.kept_edited)} kept (edited)"
        )
        if report.conflicts:
            counts += f", {len(report.conflicts)} skipped (slug taken by a user's agent)"
        prefix = "Dry run, nothing written: " if dry_run else ""
        self.stdout.write(f"{prefix}{total} catalog agents: {counts}")
        if verbose:
            for label, slugs in (("created", report.created), ("updated", report.updated)):
                if slugs:
                    self.stdout.write(f"  {label}: {', '.join(slugs)}")
        if report.kept_edited:
            kept = ", ".join(report.kept_edited)
            self.stdout.write(f"  kept because edited since seeded (--force overwrites them): {kept}")
        if report.conflicts:
            taken = ", ".join(report.conflicts)
            self.stderr.write(f"  not seeded, the slug belongs to a user's agent: {taken}")
