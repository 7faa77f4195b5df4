"""What `gramine-manifest` does to our template, without Gramine: render its Jinja variables
(gen_jinja_env.py: `gramine.libos` = PKGLIBDIR/libsysdb.so, `gramine.runtimedir()` =
PKGLIBDIR/runtime/glibc, and the -D defines the build command passes), then parse the TOML."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "gramine" / "enclave-kms.manifest.template"
PKGLIBDIR = "/usr/lib/x86_64-linux-gnu/gramine"  # the Debian/Ubuntu package's
JINJA = {
    "gramine.libos": f"{PKGLIBDIR}/libsysdb.so",
    "gramine.runtimedir()": f"{PKGLIBDIR}/runtime/glibc",
    "arch_libdir": "/lib/x86_64-linux-gnu",
    "log_level": "error",
}


def gramine_render(text: str) -> dict[str, Any]:
    """The template after Gramine's Jinja step; an unknown variable fails the test."""

    def value(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        assert expr in JINJA, f"template uses a Jinja expression the build does not define: {expr}"
        return JINJA[expr]

    return tomllib.loads(re.sub(r"\{\{(.*?)\}\}", value, text))
