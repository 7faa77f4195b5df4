"""A ~10-second run of the benchmark harness so that it cannot rot (issue 7).

Only the in-process groups run (ceilings, DCAP verification, simulated platform): no peer, no
wrk, no network, nothing installed. The assertions are about the shape of what the harness
writes and that every figure is a positive number; never about how fast anything is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench import harness, report, sdk
from bench.measure import BenchError, Case, RunSample, percentile, summarize
from bench.peers.base import HttpOp
from bench.wrk import MARKER, lua_script

SYSTEMS = {"enclave-kms", "openbao", "pykmip", "ceiling", "dcap-qvl"}
ONLY = ["crypto", "verify-dcap", "verify-dcap-cold", "platform"]


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench-results")
    # The in-process rows only: the group `attestation` would also start the servers of the
    # SDK and RA-TLS rows (bench/sdk.py), so its in-process rows are named instead.
    argv = ["--only", *ONLY, "--rounds", "1"]
    argv += ["--run-seconds", "0.02", "--out", str(out), "--no-install"]
    return harness.run(argv), out


def test_output_files_hold_exactly_the_documented_shape(
    document: tuple[dict[str, Any], Path],
) -> None:
    doc, out = document
    assert set(doc) == {"machine", "results"}
    latest = json.loads((out / "latest.json").read_text())
    assert latest == doc
    dated = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(dated) == 1
    assert json.loads(dated[0].read_text()) == doc
    assert dated[0].stem == doc["machine"]["date"][:10]
    table = (out / "latest.md").read_text()
    assert table.count("\n| ") == len(doc["results"]) + 1  # header + one line per row


def test_machine_names_the_hardware_and_versions(document: tuple[dict[str, Any], Path]) -> None:
    machine = document[0]["machine"]
    assert machine["cpu_model"]
    assert isinstance(machine["cores"], int)
    assert machine["cores"] >= 1
    assert machine["python"].count(".") == 2
    for dist in ("cryptography", "dcap-qvl", "enclave-kms"):
        assert machine["versions"][dist] != "not installed"
    assert machine["run"]["only"] == ONLY


def test_every_row_has_positive_figures(document: tuple[dict[str, Any], Path]) -> None:
    rows = document[0]["results"]
    assert rows
    for row in rows:
        assert isinstance(row["name"], str)
        assert row["system"] in SYSTEMS
        for key in ("rps", "p50_ms", "p99_ms"):
            assert isinstance(row[key], float), (row["name"], key)
            assert row[key] > 0, (row["name"], key)
        assert row["p99_ms"] >= row["p50_ms"]
        assert isinstance(row["runs"], int)
        assert row["runs"] >= 1


def test_rows_cover_ceilings_verification_and_platform(
    document: tuple[dict[str, Any], Path],
) -> None:
    rows = document[0]["results"]
    cells = {(r["name"], r["system"], r.get("processes"), r.get("vector")) for r in rows}
    for name in ("encrypt", "sign-ecdsa-p256", "sign-ed25519", "sign-rsa-2048"):
        assert (name, "ceiling", 1, None) in cells
        assert (name, "ceiling", 2, None) in cells
    for vector in ("phala-sgx", "simulated"):
        assert ("verify-dcap", "enclave-kms", None, vector) in cells
        assert ("verify-dcap", "dcap-qvl", None, vector) in cells
        assert ("verify-dcap-cold", "enclave-kms", None, vector) in cells
    for name in ("platform-init", "image-build-sign", "quote-gen", "seal", "unseal"):
        assert (name, "enclave-kms", None, None) in cells
    ours = [r for r in rows if r["name"].startswith("verify-dcap") and r["system"] == "enclave-kms"]
    assert all(r["peer"] == "dcap-qvl" and r["ratio_to_peer"] > 0 for r in ours)


def test_summary_pools_latencies_and_keeps_the_range() -> None:
    from array import array

    case = Case("encrypt", "ceiling", "crypto", lambda: RunSample(1, 1.0))
    case.samples = [
        RunSample(4, 2.0, array("q", [1_000_000, 2_000_000, 3_000_000, 4_000_000])),
        RunSample(1, 0.5, array("q", [8_000_000])),
    ]
    row = summarize(case)
    assert (row["rps"], row["rps_min"], row["rps_max"], row["runs"]) == (2.0, 2.0, 2.0, 2)
    assert (row["p50_ms"], row["p99_ms"], row["max_ms"]) == (3.0, 8.0, 8.0)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_ratios_pick_the_peer_of_the_same_vector_and_the_best_ceiling() -> None:
    def row(name: str, system: str, rps: float, **extra: Any) -> dict[str, Any]:
        return {"name": name, "system": system, "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, **extra}

    rows = [
        row("encrypt", "ceiling", 1000.0, processes=1),
        row("encrypt", "ceiling", 2000.0, processes=2),
        row("encrypt", "openbao", 100.0),
        row("encrypt", "pykmip", 10.0),
        row("encrypt", "enclave-kms", 400.0),
        row("verify-dcap", "dcap-qvl", 50.0, vector="a"),
        row("verify-dcap", "dcap-qvl", 500.0, vector="b"),
        row("verify-dcap", "enclave-kms", 100.0, vector="a"),
    ]
    report.add_ratios(rows)
    ours = rows[4]
    assert (ours["peer"], ours["ratio_to_peer"], ours["ratio_to_ceiling"]) == ("openbao", 4.0, 0.2)
    assert rows[2]["ratio_to_ceiling"] == 0.05
    assert "ratio_to_peer" not in rows[2]
    assert (rows[7]["peer"], rows[7]["ratio_to_peer"]) == ("dcap-qvl", 2.0)


def test_wrk_script_makes_each_create_request_unique() -> None:
    static = lua_script(HttpOp("POST", "/v1/x", '{"a":1}', {"X-T": "t"}), "r1")
    assert 'wrk.body = "{\\"a\\":1}"' in static
    assert "request = function" not in static
    assert MARKER in static
    unique = lua_script(HttpOp("POST", "/v1/keys/k-{n}", "{}", {}), "r2")
    assert "request = function" in unique
    assert '"r2"' in unique


def test_only_selects_by_name_system_or_group() -> None:
    case = Case("verify-dcap", "dcap-qvl", "attestation", lambda: RunSample(1, 1.0))
    assert case.matches([])
    assert case.matches(["dcap-qvl"])
    assert case.matches(["attestation"])
    assert case.matches(["verify-dcap"])
    assert not case.matches(["encrypt", "openbao"])


def test_only_attestation_also_selects_the_sdk_and_handshake_rows() -> None:
    for system in ("enclave-kms", "openbao", "ceiling"):
        assert Case("ratls-handshake", system, sdk.GROUP, lambda: RunSample(1, 1.0)).matches(
            ["attestation"]
        )
    assert sdk.GROUP == "attestation"
    assert set(harness.SDK_NAMES) == set(sdk.NAMES)
    assert not harness.Selection(ONLY).group("attestation", sdk.NAMES, ("enclave-kms",))


def test_threaded_loop_pools_every_thread_and_fails_on_errors() -> None:
    calls: list[int] = []
    sample = sdk.threaded_loop(lambda: calls.append(1), 0.01, threads=3)
    assert sample.ops == len(calls) == len(sample.latencies_ns or [])
    assert sample.ops >= 3

    def broken() -> None:
        raise OSError("refused")

    with pytest.raises(BenchError, match="refused"):
        sdk.threaded_loop(broken, 0.01, threads=2)


def test_clear_memos_forgets_what_a_new_process_would_not_know() -> None:
    from enclave_kms.client import attest

    attest.intel_root()
    assert attest.intel_root.cache_info().currsize == 1
    sdk.clear_memos()
    assert attest.intel_root.cache_info().currsize == 0


def test_audit_batch_probe_counts_the_batches_of_a_run(tmp_path: Path) -> None:
    """The benchmark's batch sizes come from the stored log: records per signed record,
    only those appended after the mark, on every chain."""
    from bench.peers.enclave_kms import audit_batches_since

    from enclave_kms.host.storage.sqlite import SQLiteStorage
    from tests.enclave.test_audit_batches import _batched_log

    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    earlier, _ = _batched_log(3)
    for batch in earlier.batches:
        storage.audit_append(batch, chain=0)
    since = audit_batches_since(tmp_path / "kms.sqlite")
    run, _ = _batched_log(6)  # batches of 1 (genesis), 1 and 5
    for batch in run.batches:
        storage.audit_append(batch, chain=1)
    storage.close()
    assert since() == {"audit_records": 7.0, "audit_batches": 3.0, "audit_batch_max": 5.0}


def test_soak_verdict_names_each_failure() -> None:
    from bench.soak import verdict

    def window(i: int, p99: float, rss: float, errors: int = 0) -> dict[str, Any]:
        return {"window": i, "rps": 100.0, "p99_ms": p99, "errors": errors, "rss_mib": rss}

    steady = [window(i, 50.0 + i, 100.0 + i / 10) for i in range(6)]
    assert verdict(steady) == []
    assert verdict([*steady, window(6, 55.0, 100.0, errors=2)]) == ["2 errors"]
    assert verdict([*steady, window(6, 55.0, 106.0)])[0].startswith("RSS grew 6.0 %")
    assert verdict([*steady, window(6, 400.0, 100.0)])[0].startswith("p99 unstable")


def test_cpu_budget_accounts_a_process_tree_and_the_app_layer() -> None:
    """bench/budget.py: the accounting finds this process's own CPU (it just burnt some),
    and the in-process app layer answers every encrypt with 200 and counts its calls."""
    import os
    import time

    from bench import budget

    me = os.getpid()
    before = budget.tree_cpu(me)["server"]
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = budget.tree_cpu(me)["server"]
    assert after[0] + after[1] > before[0] + before[1]
    layer = budget.app_layer(requests=640, concurrency=64)
    assert layer["cpu_us_per_request"] > 0
    assert layer["calls_per_request"] > 50  # a real request path, not an empty loop


def test_cli_rows_lay_out_what_init_leaves_and_the_cli_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/cli.py times the real `enclave-kms` over a config directory it writes itself:
    the CLI's own settings resolution must find the URL, the files and the token there (a
    layout the CLI did not read would time an error)."""
    from bench import cli

    from enclave_kms.cli import config

    policy, root = tmp_path / "policy.toml", tmp_path / "root.pem"
    home = cli.config_dir(
        tmp_path / "cli", url="https://127.0.0.1:1", token="t0ken", policy=policy, root=root
    )
    for name in ("ENCLAVE_KMS_URL", "ENCLAVE_KMS_TOKEN", "ENCLAVE_KMS_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENCLAVE_KMS_CONFIG", str(home / "config.toml"))
    settings = config.resolve()
    assert (settings.url, settings.policy, settings.trust_root) == (
        "https://127.0.0.1:1",
        policy,
        root,
    )
    assert settings.token() == "t0ken"  # mode 0600, or the CLI would refuse the file
    command = cli.Command(home, cli.COMMANDS[1][1], "k")
    assert command.argv[1:3] == ["encrypt", "k"]
    assert Path(command.argv[0]).is_file()
    assert command.env["ENCLAVE_KMS_CONFIG"] == str(home / "config.toml")
    assert set(harness.SDK_NAMES) >= {cli.NAME}
