"""Front-ends generate their types from docs/openapi.json: openapi-typescript turns the
document into types, and a small client that creates, lists and reads items compiles
with `tsc --strict` against them (node and npm are needed; CI has them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, require_program

CHECK = ROOT / "tests" / "typescript"
# A field with a default is optional in a request body: openapi-typescript would make
# it required unless told otherwise (the command docs/items-api.md gives).
GENERATE_OPTIONS = ["--default-non-nullable=false"]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"},
    )


def compile_client(tmp_path: Path, edit: tuple[str, str] | None = None) -> str:
    """Install the tools, generate `api.d.ts` from the document, run `tsc --strict` on
    the client (with `edit` applied to it); returns tsc's output, raising on failure."""
    npm = require_program("npm", "npm")
    require_program("node", "nodejs")
    project = tmp_path / "client"
    shutil.copytree(CHECK, project, ignore=shutil.ignore_patterns("node_modules", "api.d.ts"))
    if edit is not None:
        client = project / "client.ts"
        client.write_text(client.read_text().replace(*edit))
    installed = run([npm, "ci", "--no-audit", "--loglevel=error"], project)
    assert installed.returncode == 0, installed.stderr
    binaries = project / "node_modules" / ".bin"
    document = str(ROOT / "docs" / "openapi.json")
    tool = str(binaries / "openapi-typescript")
    generated = run([tool, document, "-o", "api.d.ts", *GENERATE_OPTIONS], project)
    assert generated.returncode == 0, generated.stderr
    assert "listItems" in (project / "api.d.ts").read_text()
    compiled = run([str(binaries / "tsc"), "-p", "."], project)
    if compiled.returncode != 0:
        raise TypeError(compiled.stdout + compiled.stderr)
    return compiled.stdout


def test_a_typed_client_compiles_against_the_generated_types(tmp_path: Path) -> None:
    compile_client(tmp_path)


def test_the_check_fails_when_the_client_and_the_document_disagree(tmp_path: Path) -> None:
    """The same check against a client reading a field the API does not have."""
    with pytest.raises(TypeError, match="'name' does not exist"):
        compile_client(tmp_path, edit=("again.title", "again.name"))
