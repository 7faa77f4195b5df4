"""What `gramine-manifest` does to our template, without Gramine: its Jinja step (previewed
by platform/gramine_manifest.py for the expressions the template uses), then TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from enclave_kms.platform.gramine_manifest import preview_gramine_jinja

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "gramine" / "enclave-kms.manifest.template"


def gramine_render(text: str) -> dict[str, Any]:
    """The template after Gramine's Jinja step (the build's -D values), parsed."""
    return tomllib.loads(preview_gramine_jinja(text))
