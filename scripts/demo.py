"""`make demo`: the whole enclave-kms flow, narrated, on the simulated platform.

Starts a server in the background, shows a client refusing it until a policy names it, pins
it, gets the first admin token, creates keys, encrypts and decrypts, signs and verifies,
prints the tutorial's enclave JSON, checks the audit log, runs the enclave-to-enclave secure
channel demo, and stops everything. Every step prints the exact command, so you can repeat
it by hand. Everything lives in a temporary directory (or --work-dir) and is removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console(highlight=False, soft_wrap=True)
CLI = [sys.executable, "-m", "enclave_kms.cli.main"]


def say(title: str, text: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}[/bold]", align="left"))
    console.print(text)


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    expect: int = 0,
    stdin: bytes = b"",
    show: bool = True,
) -> str:
    shown = " ".join(shlex.quote(a) for a in args)
    console.print(f"[cyan]$ enclave-kms {shown}[/cyan]")
    proc = subprocess.run(  # noqa: S603 - our own CLI with fixed arguments
        [*CLI, *args], cwd=cwd, env=env, input=stdin, capture_output=True, check=False
    )
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if out and show:
        console.print(out.rstrip("\n"), markup=False, soft_wrap=True)
    if err:
        console.print(err.rstrip("\n"), markup=False, style="yellow", soft_wrap=True)
    if proc.returncode != expect:
        console.print(f"[red]exit code {proc.returncode}, expected {expect}: demo stopped[/red]")
        raise SystemExit(1)
    if expect:
        console.print(f"[green]→ refused as expected (exit code {expect})[/green]")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def verify_steps(url: str, root: str, work: Path, env: dict[str, str]) -> None:
    """Steps 2-4: refusals, the policy, the first token."""
    say(
        "2. A client refuses what it cannot verify",
        "By default only Intel's root of trust is accepted, so a simulated server fails "
        "verification (exit 2). `--wait` waits for the server to come up.",
    )
    run(["attest", url, "--wait", "120"], work, env, expect=2)
    say(
        "",
        "Trusting the simulated root is not enough: the policy must name it too (exit 4), "
        "so simulated evidence is never accepted by accident.",
    )
    run(["attest", url, "--trust-root", root], work, env, expect=4)

    say(
        "3. Pin the enclave in a policy (trust on first use)",
        "The evidence is verified — certificate chain, collateral, signatures, that the "
        "quote binds the TLS key, a fresh nonce — and the enclave seen now is pinned.",
    )
    run(["policy", "from-server", url, "--trust-root", root, "--out", "policy.toml"], work, env)
    console.print((work / "policy.toml").read_text().rstrip(), markup=False)
    run(["attest", url, "--trust-root", root, "--policy", "policy.toml"], work, env)

    say(
        "4. The first admin token",
        "Issued by the enclave over the attested connection, stored in a 0600 file, never "
        "printed. The URL, policy and root are saved, so later commands need no flags.",
    )
    run(["init", url, "--trust-root", root, "--policy", "policy.toml"], work, env)


def use_steps(work: Path, env: dict[str, str]) -> None:
    """Steps 5-9: keys, encryption, signatures, the tutorial JSON, the audit log."""
    say(
        "5. Keys live only inside the enclave",
        "The RSA key is generated inside the enclave (a progress indicator shows on a terminal).",
    )
    run(["key", "create", "orders"], work, env)
    run(["key", "create", "releases", "--type", "rsa-3072"], work, env)
    run(["key", "list"], work, env)

    say("6. Encrypt and decrypt", "Ciphertexts name the key version: ekms:v<N>:…")
    ciphertext = run(
        ["encrypt", "orders", "--aad", "order 7"], work, env, stdin=b"card 4111 1111 1111 1111"
    )
    (work / "card.enc").write_text(ciphertext)
    run(["decrypt", "orders", "--in", "card.enc", "--aad", "order 7"], work, env)
    console.print()
    say("", "The associated data is bound to the ciphertext: another value is refused.")
    run(["decrypt", "orders", "--in", "card.enc", "--aad", "order 8"], work, env, expect=5)

    say("7. Sign and verify", "RSA-PSS inside the enclave; a changed message does not verify.")
    (work / "release.txt").write_text("release 1.0\n")
    signature = run(["sign", "releases", "--in", "release.txt"], work, env, show=False)
    (work / "release.sig").write_text(signature)
    console.print(f"{signature[:60]}… (saved in release.sig)", markup=False)
    verify = ["verify", "releases", "--in", "release.txt", "--signature-file", "release.sig"]
    run(verify, work, env)
    (work / "release.txt").write_text("release 1.0 (tampered)\n")
    console.print("[dim]release.txt changed[/dim]")
    run(verify, work, env, expect=2)

    say(
        "8. The tutorial's enclave JSON",
        "The verified evidence in the format the tutorial printed: its quote binds the "
        "server's TLS key (EnclaveHeldDataHex).",
    )
    info = run(["attest", "--json"], work, env, show=False)
    (work / "enclave.info.json").write_text(info)
    doc = json.loads(info)
    for field in ("QuoteHex", "EnclaveHeldDataHex"):
        value = doc[field]
        doc[field] = f"{value[:48]}… ({len(value) // 2} bytes)"
    console.print(json.dumps(doc, indent=2, ensure_ascii=False), markup=False)
    console.print("(abridged; the whole document is in enclave.info.json)")

    say(
        "9. The audit log",
        "Every request was recorded, hash-chained and signed inside the enclave, before its "
        "answer was sent. The host stores the records; anyone can check them.",
    )
    run(["audit", "verify", "kms-data", "--against-server"], work, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="keep everything here (not removed)")
    options = parser.parse_args()
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="enclave-kms-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_KMS_")}
    env["ENCLAVE_KMS_CONFIG"] = str(work / "client" / "config.toml")
    env["COLUMNS"] = str(max(console.width, 100))  # the commands' tables fit our screen
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    root = "kms-data/sim-root.pem"
    server: subprocess.Popen[bytes] | None = None
    try:
        say(
            "1. Start a KMS server (simulated SGX)",
            "The host process launches the enclave process, which loads its measured image, "
            "unseals its keys and serves HTTPS itself: TLS ends inside the enclave.\n"
            f"Working directory: {work}",
        )
        console.print(
            f"[cyan]$ enclave-kms serve --data-dir kms-data --listen 127.0.0.1:{port} &[/cyan]"
        )
        log = (work / "serve.log").open("wb")
        server = subprocess.Popen(  # noqa: S603 - our own CLI with fixed arguments
            [*CLI, "serve", "--data-dir", "kms-data", "--listen", f"127.0.0.1:{port}"],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        verify_steps(url, root, work, env)
        use_steps(work, env)
    finally:
        if server is not None:
            say("10. Stop the server", "")
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
            console.print("server stopped")

    from enclave_kms.cli.groups import all_groups

    if any(name == "channel" for name, _app, _help in all_groups()):
        say(
            "11. Enclave to enclave: the secure channel",
            "Two enclave processes attest each other and exchange messages; the host relays "
            "bytes it cannot read.",
        )
        run(["channel", "demo", "--work-dir", str(work / "channel")], work, env)

    say("Done", "Next: docs/quickstart.md, docs/cli.md, docs/sdk.md.")
    if options.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
