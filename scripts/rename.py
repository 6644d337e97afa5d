"""Turn a fresh fork into your project: `python3 -m scripts.rename "Orders API"`.

Replaces the display name (README title, PROJECT_NAME default and example) and the
slug (pyproject/uv.lock project name, compose project, image and Kubernetes resource
names, labels) everywhere they appear. The current names are read from the files
themselves (pyproject `name`, README title), so running it twice changes nothing the
second time, and a project can be renamed again later. `--dry-run` prints the diff
and writes nothing. Standard library only: it runs before `make install`.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Files that carry the names. pyproject.toml and README.md hold the current names, so
# they are written last: an interrupted run can simply be repeated.
FILES = (
    ".env.example",
    "app/core/config.py",
    "Makefile",
    "uv.lock",
    "docker/Dockerfile",
    "docker/Dockerfile.dev",
    "docker/docker-compose.yml",
    "docker/k8s/**/*.yaml",
    "docker/k8s/*.env",
    "docs/*.md",
    "docs/openapi.json",
    "docker/grafana/**/*.json",
    "docker/grafana/**/*.yml",
    "README.md",
    "pyproject.toml",
)
# Kubernetes names are DNS labels (63 characters); leave room for "-worker", "-migrate"...
MAX_SLUG_LENGTH = 40
SLUG_PATTERN = re.compile(rf"^[a-z][a-z0-9-]{{0,{MAX_SLUG_LENGTH - 2}}}[a-z0-9]$")
PROJECT_NAME_LINE = re.compile(r'^name = "([^"]+)"$', re.MULTILINE)
TITLE_LINE = re.compile(r"^# (.+)$", re.MULTILINE)


class RenameError(ValueError):
    """A name that cannot be used, or a repository this script does not recognise."""


@dataclass(frozen=True)
class Names:
    display: str
    slug: str


def slugify(display: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", display.lower()).strip("-")


def new_names(display: str, slug: str | None) -> Names:
    display = display.strip()
    if not display or any(char in display for char in '"\\\n\r`$'):
        raise RenameError(f"project name {display!r} must be non-empty plain text")
    slug = slug or slugify(display)
    if not SLUG_PATTERN.match(slug) or "--" in slug:
        raise RenameError(
            f"slug {slug!r} must be lowercase letters, digits and single hyphens, start "
            f"with a letter and be at most {MAX_SLUG_LENGTH} characters (pass --slug)"
        )
    return Names(display, slug)


def current_names(root: Path) -> Names:
    project = PROJECT_NAME_LINE.search((root / "pyproject.toml").read_text())
    title = TITLE_LINE.search((root / "README.md").read_text())
    if project is None or title is None:
        raise RenameError(f"{root} has no pyproject `name = ...` or README `# Title` line")
    return Names(title.group(1).strip(), project.group(1))


def _slug_pattern(slug: str) -> re.Pattern[str]:
    # The slug as a whole word: "<slug>-api" matches, "my-<slug>" and "<slug>_x" do not.
    return re.compile(rf"(?<![A-Za-z0-9_-]){re.escape(slug)}(?![A-Za-z0-9_])")


def rewrite(path: Path, text: str, old: Names, new: Names) -> str:
    if path.name == "uv.lock":
        # Only the project's own entry; dependencies are never renamed.
        root_entry = re.compile(
            rf'^name = "{re.escape(old.slug)}"(\nversion = "[^"]*"\nsource = {{ virtual = "\." }})',
            re.MULTILINE,
        )
        return root_entry.sub(rf'name = "{new.slug}"\1', text)
    text = text.replace(old.display, new.display)
    return _slug_pattern(old.slug).sub(new.slug, text)


def target_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in FILES:
        found.extend(sorted(path for path in root.glob(pattern) if path.is_file()))
    return found


def plan(root: Path, new: Names) -> dict[Path, tuple[str, str]]:
    """Each file that would change, with its text before and after."""
    old = current_names(root)
    changes: dict[Path, tuple[str, str]] = {}
    for path in target_files(root):
        before = path.read_text()
        after = rewrite(path, before, old, new)
        if after != before:
            changes[path] = (before, after)
    return changes


def _diff(root: Path, path: Path, before: str, after: str) -> str:
    name = str(path.relative_to(root))
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), name, name, n=0
    )
    return "".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rename", description=__doc__.splitlines()[0])
    parser.add_argument("name", help='display name, e.g. "Orders API"')
    parser.add_argument("--slug", help="machine name (default: derived from the name)")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        new = new_names(args.name, args.slug)
        changes = plan(ROOT, new)
    except RenameError as exc:
        print(f"rename: {exc}", file=sys.stderr)
        return 2
    if not changes:
        print(f"Nothing to change: the project is already {new.display!r} ({new.slug}).")
        return 0
    for path, (before, after) in changes.items():
        if args.dry_run:
            print(_diff(ROOT, path, before, after), end="")
        else:
            path.write_text(after)
    count = f"{len(changes)} file{'s' if len(changes) != 1 else ''}"
    verb = "would change" if args.dry_run else "changed"
    print(f"{count} {verb}: now {new.display!r} ({new.slug}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
