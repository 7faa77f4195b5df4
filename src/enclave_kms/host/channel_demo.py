"""Two enclave processes build a secure channel while the host relays bytes it cannot read.

This is the Open Enclave proprietary secure-channel sample's host, done with real processes:
enclave A (initiator) and enclave B (responder) each make evidence binding a fresh RSA-2048
key, verify the other's evidence against a per-peer policy, establish a session key and
exchange encrypted messages both ways. With an attack, the relay (or the peer's identity) is
made hostile and the rejection is shown; the channel is then closed for good.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_kms.attestation.types import spki_sha256
from enclave_kms.edl_endpoint import FrameObserver
from enclave_kms.errors import ChannelStateError, EnclaveKMSError, UsageError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.service import ensure_image, ensure_platform, launch_enclave
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.image import EnclaveConfig
from enclave_kms.platform.sim.loader import LoadedImage

RELAY_ATTACKS = ("replay", "reorder", "tamper", "truncate", "bad-signature")
POLICY_ATTACKS = ("wrong-signer", "wrong-product", "low-svn", "debug-peer")
ATTACKS = RELAY_ATTACKS + POLICY_ATTACKS

Say = Callable[[str], None]


@dataclass
class DemoResult:
    messages_a_to_b: int = 0
    messages_b_to_a: int = 0
    rejected: EnclaveKMSError | None = None
    frames: list[tuple[str, str, bytes]] = field(default_factory=list)


def _policy_toml(image: LoadedImage, root_spki: str) -> str:
    """What each enclave demands of its peer: the sample's rules plus ours."""
    return "\n".join(
        [
            f'mr_signer = "{image.mr_signer.hex()}"',
            "isv_prod_id = 1",
            "min_isv_svn = 1",
            "allow_debug = false",
            'accepted_tcb_statuses = ["UpToDate"]',
            f'simulated_root = "{root_spki}"',
            "",
        ]
    )


def _peer_config(attack: str | None) -> tuple[EnclaveConfig, str]:
    """B's image config and signer for a policy attack (A always runs the genuine image)."""
    if attack == "wrong-product":
        return EnclaveConfig(product_id=2), "signer.pem"
    if attack == "low-svn":
        return EnclaveConfig(security_version=0), "signer.pem"
    if attack == "debug-peer":
        return EnclaveConfig(debug=True), "signer.pem"
    if attack == "wrong-signer":
        return EnclaveConfig(), "other-signer.pem"
    return EnclaveConfig(), "signer.pem"


def _tamper(message: bytes, offset_from_end: int) -> bytes:
    altered = bytearray(message)
    altered[len(altered) - offset_from_end] ^= 0x01
    return bytes(altered)


def run_demo(
    work_dir: Path,
    *,
    attack: str | None = None,
    messages: int = 3,
    say: Say = lambda _line: None,
    stderr_sink: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the protocol end to end; with `attack`, return the typed rejection in the result."""
    if attack is not None and attack not in ATTACKS:
        raise UsageError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o700)
    result = DemoResult()
    platform = ensure_platform(work_dir / "platform")
    say("building and signing the two enclave images (simulated SGX)")
    image_a = ensure_image(work_dir / "image-a", work_dir / "signer.pem")
    b_config, b_signer = _peer_config(attack)
    image_b = ensure_image(
        work_dir / f"image-b-{attack or 'genuine'}", work_dir / b_signer, b_config
    )
    root_spki = spki_sha256(platform.trust_root().certificate)
    channel_common = {
        "policy_toml": _policy_toml(image_a, root_spki),
        "trust_root_pem": platform.root_pem(),
    }

    def observer(name: str) -> FrameObserver:
        return lambda direction, wire: result.frames.append((name, direction, wire))

    def launch(name: str, image: LoadedImage, role: str) -> tuple[EnclaveProcess, dict[str, Any]]:
        # State is sealed to its enclave's identity: one store per image and role.
        storage = SQLiteStorage(work_dir / f"{image.directory.name}-{role}.sqlite")
        try:
            enclave, ident = launch_enclave(
                image,
                platform,
                storage,
                work_dir,
                channel={**channel_common, "role": role},
                observer=observer(name),
                stderr_sink=stderr_sink,
            )
        except BaseException:
            storage.close()
            raise
        enclaves.append((enclave, storage))
        return enclave, ident

    enclaves: list[tuple[EnclaveProcess, SQLiteStorage]] = []
    specs = (("A", image_a, "initiator"), ("B", image_b, "responder"))
    try:
        # The two enclaves are independent until they talk: start them side by side.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="demo-launch") as pool:
            started = [pool.submit(launch, *spec) for spec in specs]
        (a, ident_a), (b, ident_b) = (future.result() for future in started)
        for (name, _, role), ident in zip(specs, (ident_a, ident_b), strict=True):
            say(
                f"enclave {name} ({role}) started: MRENCLAVE {ident['mr_enclave'][:16]}…, "
                f"ProductID {ident['isv_prod_id']}, SVN {ident['isv_svn']}, debug {ident['debug']}"
            )
        try:
            _protocol(a, b, attack=attack, messages=messages, say=say, result=result)
        except EnclaveKMSError as exc:
            result.rejected = exc
            say(f"REJECTED ({type(exc).__name__}): {exc.message}")
            _show_closed(a, b, say)
    finally:
        for enclave, storage in enclaves:
            enclave.stop()
            storage.close()
    return result


def _protocol(
    a: EnclaveProcess,
    b: EnclaveProcess,
    *,
    attack: str | None,
    messages: int,
    say: Say,
    result: DemoResult,
) -> None:
    report_a = a.call("get_remote_report_with_pubkey")["message"]
    say(f"A → host → B: public key + evidence ({len(report_a)} bytes)")
    report_b = b.call("get_remote_report_with_pubkey")["message"]
    say(f"B → host → A: public key + evidence ({len(report_b)} bytes)")
    b.call("verify_report_and_set_pubkey", message=report_a)
    say("B verified A's quote, its policy and its key binding")
    a.call("verify_report_and_set_pubkey", message=report_b)
    say("A verified B's quote, its policy and its key binding: mutual attestation")

    establish = a.call("establish_secure_channel")["message"]
    say(f"A → B: session key wrapped with RSA-OAEP, signed with RSA-PSS ({len(establish)} B)")
    if attack == "bad-signature":
        establish = _tamper(establish, 1)  # the signature is the last field
        say("host (attacker): flipped one bit of A's signature")
    ack = b.call("acknowledge_secure_channel", message=establish)["message"]
    say("B checked A's signature with A's attested key, unwrapped the key, acknowledged")
    a.call("acknowledge_secure_channel", message=ack)
    say("A checked the acknowledgement: channel SECURE, separate keys and counters per direction")

    for sender, receiver, label in ((a, b, "A → B"), (b, a, "B → A")):
        sent: list[bytes] = []
        for i in range(messages):
            record = sender.call("generate_encrypted_message", index=i)["message"]
            sent.append(record)
            if attack == "reorder" and i == 0:
                continue  # hold back the first record, deliver it after the second
            delivered = record
            if attack == "tamper" and i == 1:
                delivered = _tamper(record, len(record) // 2)
                say("host (attacker): flipped one bit in the middle of a record")
            if attack == "truncate" and i == 1:
                delivered = record[:-5]
                say("host (attacker): cut the last 5 bytes of a record")
            digest = receiver.call("process_encrypted_msg", message=delivered)["digest"]
            say(f"{label}: record {i} ({len(record)} B) accepted, digest {digest.hex()[:16]}…")
            if attack == "reorder" and i == 1:
                say("host (attacker): now delivering record 0 after record 1")
                receiver.call("process_encrypted_msg", message=sent[0])
            if attack == "replay" and i == 1:
                say("host (attacker): replaying record 1")
                receiver.call("process_encrypted_msg", message=record)
            if label == "A → B":
                result.messages_a_to_b += 1
            else:
                result.messages_b_to_a += 1


def _show_closed(a: EnclaveProcess, b: EnclaveProcess, say: Say) -> None:
    """After a rejection, the channel is closed for good on the side that rejected."""
    for name, enclave in (("A", a), ("B", b)):
        with contextlib.suppress(ChannelStateError):
            enclave.call("generate_encrypted_message", index=99)
            continue
        say(f"enclave {name}: channel closed; every further call is refused")
