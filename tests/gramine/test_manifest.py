"""Defect 2 of issue 18: the manifest must be valid for Gramine 1.8 and 1.9 (1.9 refuses the
string form of `loader.entrypoint`), run an absolute interpreter with PYTHONHOME, and carry
the image's measurement and the thread budget. Checked against Gramine's rules as restated in
platform/gramine_manifest.py, and by running the manifest's own command line and environment
(nothing else: no PATH) to see the enclave reach its EDL channel."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from enclave_kms.edl_endpoint import CHANNEL_PREAMBLE
from enclave_kms.errors import ImageError
from enclave_kms.platform import threads
from enclave_kms.platform.gramine_manifest import (
    apply_gramine_manifest_defaults,
    check_enclave_kms_manifest,
    check_gramine_manifest,
    enclave_size,
    render_gramine_template,
    to_gramine_trusted_files,
)
from enclave_kms.platform.image import EnclaveConfig, Manifest, build_manifest
from tests.gramine.manifest_world import TEMPLATE, gramine_render

CONFIG = EnclaveConfig(debug=False, product_id=5, security_version=4)


@pytest.fixture(scope="module")
def image() -> Manifest:
    return build_manifest(CONFIG)  # the real enclave: this interpreter, stdlib, site-packages


@pytest.fixture(scope="module")
def rendered(image: Manifest) -> str:
    return render_gramine_template(TEMPLATE.read_text(), image)


def final(text: str, version: str) -> dict[str, Any]:
    """The manifest as `gramine-manifest` of `version` would check it."""
    document = gramine_render(text)
    apply_gramine_manifest_defaults(document, version)
    return document


@pytest.mark.parametrize("version", ["1.8", "1.9"])
def test_rendered_manifest_passes_gramine_and_our_rules(rendered: str, version: str) -> None:
    document = final(rendered, version)
    assert check_gramine_manifest(document, version) == []
    assert check_enclave_kms_manifest(document, CONFIG) == []
    sgx = document["sgx"]
    assert (sgx["isvprodid"], sgx["isvsvn"], sgx["debug"]) == (5, 4, False)
    assert sgx["max_threads"] == threads.gramine_max_threads() > 8
    assert document["loader"]["entrypoint"]["uri"].startswith("file:")


def test_image_files_are_listed_with_the_measured_hashes(rendered: str, image: Manifest) -> None:
    listed = {
        f["uri"]: f["sha256"]
        for f in final(rendered, "1.9")["sgx"]["trusted_files"]
        if isinstance(f, dict)
    }
    measured = {f["uri"]: f["sha256"] for f in to_gramine_trusted_files(image)}
    assert listed.items() <= measured.items()
    # only files under directories the template hashes whole are left to gramine-manifest
    for uri in measured.keys() - listed.keys():
        assert uri.startswith(("file:/lib/x86_64-linux-gnu/", "file:/usr/lib/x86_64-linux-gnu/"))


def test_the_string_form_of_loader_entrypoint_is_refused_by_1_9_only(rendered: str) -> None:
    old = rendered.replace(
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"',
        'loader.entrypoint = "file:{{ gramine.libos }}"',
    )
    assert old != rendered
    with pytest.raises(ImageError, match=r"Unknown loader\.entrypoint format"):
        final(old, "1.9")
    document = gramine_render(old)
    assert apply_gramine_manifest_defaults(document, "1.8")  # a deprecation warning
    assert check_gramine_manifest(document, "1.8") == []


def test_the_manifests_command_line_runs_the_enclave_with_its_environment_only(
    rendered: str,
) -> None:
    """Gramine passes no host environment and no PATH: the manifest's argv and env alone
    must find the interpreter, its standard library and the enclave package."""
    loader = final(rendered, "1.9")["loader"]
    env = {k: v for k, v in loader["env"].items() if k != "LD_LIBRARY_PATH"}  # Gramine's /lib
    result = subprocess.run(
        loader["argv"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.startswith(CHANNEL_PREAMBLE), (result.stdout[:300], result.stderr[-2000:])


def _mutated(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("sgx.thread_num", 8, "sgx.thread_num: not a Gramine manifest key"),
        ("loader.exec", "file:/bin/sh", "loader.exec: not a Gramine manifest key"),
        ("sgx.enclave_size", "3G", "not a power of two"),
        ("sgx.max_threads", 0, "sgx.max_threads: must be in"),
        ("sgx.remote_attestation", "epid", "sgx.remote_attestation"),
        ("libos.entrypoint", "file:/usr/bin/python3", "in-Gramine path, not URI"),
        ("loader.argv", [], "has no arguments"),
        ("loader.argv_src_file", "file:argv", "mutually exclusive"),
        ("fs.mounts", [{"path": "/", "uri": "file:/"}], 'cannot be "/"'),
        ("fs.mounts", [{"path": "lib", "uri": "file:/lib"}], "relative mount path"),
        ("fs.mounts", [{"path": "/x"}], "fs.mounts[0]"),
        ("loader.env", {"X": {"passthrough": False}}, "loader.env.X"),
        ("sgx.trusted_files", [{"uri": "file:/a", "sha256": "zz"}], "not a SHA-256"),
        ("libos", None, "manifest.libos: required"),
    ],
)
def test_gramine_rules_name_what_is_wrong(
    rendered: str, path: str, value: Any, problem: str
) -> None:
    document = _mutated(final(rendered, "1.9"), path, value)
    problems = check_gramine_manifest(document, "1.9")
    assert any(problem in p for p in problems), problems


def test_epid_is_known_to_1_8_only(rendered: str) -> None:
    document = _mutated(final(rendered, "1.8"), "sgx.remote_attestation", "epid")
    assert check_gramine_manifest(document, "1.8") == []
    assert check_gramine_manifest(document, "1.9")


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("loader.argv", ["python3", "-S", "-B", "-m", "enclave_kms.enclave"], "argv[0]"),
        ("loader.env.PYTHONHOME", None, "PYTHONHOME"),
        ("loader.env.PATH", {"passthrough": True}, "untrusted host"),
        ("loader.insecure__use_host_env", True, "host choose"),
        ("sgx.max_threads", 8, "thread budget"),
        ("sgx.debug", True, "sgx.debug must be false"),
        ("sgx.isvsvn", 3, "isvsvn"),
        ("sgx.file_check_policy", "allow_all_but_log", "strict"),
        ("sgx.allowed_files", ["file:/etc/"], "unhashed"),
    ],
)
def test_our_rules_name_what_is_unsafe(rendered: str, path: str, value: Any, problem: str) -> None:
    document = _mutated(final(rendered, "1.9"), path, value)
    problems = check_enclave_kms_manifest(document, CONFIG)
    assert any(problem in p for p in problems), problems


def test_enclave_size_holds_heap_stacks_and_code_per_worker() -> None:
    size = enclave_size(CONFIG)
    assert size & (size - 1) == 0
    need = CONFIG.heap_size + threads.gramine_max_threads() * CONFIG.stack_size + (1 << 30)
    assert need <= size < 2 * need


def test_old_defaults_would_not_have_passed(tmp_path: Path) -> None:
    """The pre-issue-18 values, as this module checks them (kept as a regression guard)."""
    old = {
        "libos": {"entrypoint": "/usr/bin/python3"},
        "loader": {
            "entrypoint": {"uri": "file:/x"},
            "argv": ["python3", "-B", "-m", "enclave_kms.enclave"],
            "env": {},
        },
        "fs": {"mounts": []},
        "sgx": {
            "max_threads": 8,
            "debug": False,
            "isvprodid": 5,
            "isvsvn": 4,
            "remote_attestation": "dcap",
            "file_check_policy": "strict",
        },
    }
    problems = check_enclave_kms_manifest(old, CONFIG)
    assert any("argv[0]" in p for p in problems)
    assert any("PYTHONHOME" in p for p in problems)
    assert any("thread budget" in p for p in problems)
