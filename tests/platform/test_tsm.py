"""configfs-tsm evidence for confidential-VM workloads, against a fake tree that behaves like
the kernel's (tests/platform/fake_tsm.py) and quotes with the simulated TD quoting enclave."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import PlatformError, UsageError
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TdIdentity
from enclave_kms.platform.tsm import ConfigfsTsm
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.tdx import TdReport10
from tests.platform.fake_tsm import FakeTsm

TD = TdIdentity(mr_td=hashlib.sha384(b"cvm workload").digest())


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("tsm") / "platform")


@pytest.fixture
def fake(tmp_path: Path, platform: SimPlatform) -> Iterator[FakeTsm]:
    tsm = FakeTsm(tmp_path / "tsm" / "report", platform, TD)
    yield tsm
    tsm.close()


def test_report_binds_inblob_and_verifies(fake: FakeTsm, platform: SimPlatform) -> None:
    inblob = hashlib.sha512(b"workload key || nonce").digest()
    report = ConfigfsTsm(fake.root, make_entry=fake.mkdir).report(inblob)
    assert (report.provider, report.evidence_format) == ("tdx_guest", "tdx")
    body = parse_quote(report.outblob).body
    assert isinstance(body, TdReport10)
    assert body.report_data == inblob
    assert body.mr_td == TD.mr_td
    now = datetime.now(UTC).replace(microsecond=0)
    verified = verify_quote(
        report.outblob, platform.tdx_collateral(now), trust_root=platform.trust_root(), now=now
    )
    assert verified.tee == "TDX"


def test_each_request_gets_its_own_entry(fake: FakeTsm) -> None:
    tsm = ConfigfsTsm(fake.root, make_entry=fake.mkdir)
    a = tsm.report(b"a" * 64)
    b = tsm.report(b"b" * 64)
    assert len({e.path.name for e in fake.entries}) == 2
    assert parse_quote(a.outblob).report_data[:1] == b"a"
    assert parse_quote(b.outblob).report_data[:1] == b"b"


def test_a_racing_writer_is_detected(fake: FakeTsm) -> None:
    fake.extra_writers = 1  # someone else wrote to our entry between our write and read
    with pytest.raises(PlatformError, match="another writer raced"):
        ConfigfsTsm(fake.root, make_entry=fake.mkdir).report(b"x" * 64)


def test_unsupported_provider_is_refused(tmp_path: Path, platform: SimPlatform) -> None:
    tsm = FakeTsm(tmp_path / "report", platform, TD, provider="arm_cca_guest")
    try:
        with pytest.raises(PlatformError, match="not supported"):
            ConfigfsTsm(tsm.root, make_entry=tsm.mkdir).report(b"x")
    finally:
        tsm.close()


def test_bad_inblob_and_missing_tree(fake: FakeTsm, tmp_path: Path) -> None:
    tsm = ConfigfsTsm(fake.root, make_entry=fake.mkdir)
    for bad in (b"", b"x" * 65):
        with pytest.raises(UsageError):
            tsm.report(bad)
    with pytest.raises(PlatformError, match="not a confidential VM"):
        ConfigfsTsm(tmp_path / "absent")
