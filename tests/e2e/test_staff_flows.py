"""Staff flows in a real browser (issue 7), against a live web server, a real Celery worker
and runsftpd (tests/support/e2e.py), with partners played by OpenSSH ``sftp``, ``gpg`` and
plain HTTP.

1. log in; create a partner; add a "Client SFTP server with PGP private key" authorization
   with a PuTTY key, read the field error, fix it; no secret in the page source; Test
   connection succeeds against a real OpenSSH sshd;
2. a managed SFTP account: a too-weak password shows the rule; fixed; the partner gets a PGP
   public key; Generate SSH key pair downloads the private key encrypted to it, which gpg
   decrypts and OpenSSH sftp logs in with;
3. an API client: its secret is shown once (read and copied with the button), masked after
   a reload, and it obtains a token;
4. an import job: a CSV uploaded with sftp to the managed account, Run now, the run page
   follows the run by itself until it finishes with the right counts;
5. an audience and an export job: Run now, and the file is on the SFTP server.

Each test is one flow, with its screenshots in test-output/e2e/<test>/. The tests share one
stack per module and build on each other's data (the partner, the account and its key, the
imported profiles) through `Journey.once`: a test that runs alone, or on another xdist
worker, first replays the flows it needs.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.e2e import (
    ADMIN_USERNAME,
    CHROMIUM,
    Shots,
    Stack,
    gpg_decrypt,
    secret_fragments,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
    ),
]

PARTNER = "Acme Retail"
PARTNER_SLUG = "acme-retail"
ACCOUNT = "acme_drop"
ACCOUNT_LABEL = "Acme drop box"
IMPORT_FILE = "members-2025-03.csv"
MEMBERS_CSV = (
    "email,first_name,country\n"
    "ada@example.com,Ada,FR\n"
    "bob@example.com,Bob,DE\n"
    ",Nobody,FR\n"  # line 4: no identity, rejected and reported
    "chloe@example.com,Chloé,FR\n"
)
RUN_TIMEOUT_MS = 90_000


# --------------------------------------------------------------------------- shared state


@dataclass
class Journey:
    """What the flows of one stack have made so far, so that each is made once."""

    stack: Stack
    work: Path  # the partner's side: keys, files to upload, downloads
    done: dict[str, Any] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def once(self, name: str, make: Callable[[], Any]) -> Any:
        if name in self.failed:
            pytest.skip(f"'{name}' failed earlier on this stack")
        if name not in self.done:
            try:
                self.done[name] = make()
            except BaseException:
                self.failed.add(name)
                raise
        return self.done[name]


@pytest.fixture(scope="module")
def journey(stack: Stack, tmp_path_factory) -> Journey:
    return Journey(stack, tmp_path_factory.mktemp("partner-side"))


@dataclass
class Staff:
    """A member of staff at the browser, and what they need at hand."""

    page: Any  # playwright.sync_api.Page
    shots: Shots
    stack: Stack
    journey: Journey
    keys: Any  # tests.support.gpgkeys.KeySet

    def shot(self, step: str) -> None:
        self.shots(self.page, step)

    # -- admin idioms --------------------------------------------------------------------
    def log_in(self, screenshots: bool = False) -> None:
        from playwright.sync_api import expect

        page = self.page
        page.goto("/admin/")
        expect(page).to_have_url(re.compile(r"/admin/login/"))
        if screenshots:
            self.shot("login page")
        page.fill("#id_username", ADMIN_USERNAME)
        page.fill("#id_password", self.stack.admin_password)
        page.click("input[type=submit]")
        expect(page).to_have_url(re.compile(r"/admin/$"))
        expect(page.locator("#content h1")).to_have_text("Data exchange with partners")
        if screenshots:
            self.shot("logged in")

    def save(self, continue_editing: bool = True) -> None:
        self.page.click("input[name=_continue]" if continue_editing else "input[name=_save]")

    def expect_saved(self) -> None:
        from playwright.sync_api import expect

        page = self.page
        page.locator(".messagelist .success, .errornote").first.wait_for()  # either answer
        errors = page.locator(".errornote, .errorlist")
        if errors.count():
            raise AssertionError("the form was refused: " + " | ".join(errors.all_inner_texts()))
        expect(page.locator(".messagelist .success").first).to_be_visible()

    def field_errors(self, name: str) -> str:
        return self.page.locator(f".field-{name} .errorlist").inner_text()

    def readonly(self, name: str):
        return self.page.locator(f".field-{name} .readonly")

    def open_change_page(self, changelist: str, link_text: str) -> None:
        """From a list, like a person: the list, then the object's link."""
        self.page.goto(changelist)
        self.page.locator("#result_list").get_by_role("link", name=link_text, exact=True).click()

    # -- shared steps ----------------------------------------------------------------------
    def ensure_partner(self) -> str:
        return self.journey.once("partner", lambda: create_partner(self))

    def ensure_account(self) -> tuple[str, Path]:
        return self.journey.once("managed account", lambda: managed_account_flow(self))

    def ensure_import(self) -> int:
        return self.journey.once("import", lambda: import_flow(self))


@pytest.fixture
def staff(page, shots, stack, journey, gpg_keys) -> Iterator[Staff]:
    stack.check_running()
    person = Staff(page, shots, stack, journey, gpg_keys)
    yield person
    stack.check_running()


def expect_no_secret(page: Any, secret_values: list[str], where: str) -> None:
    html = page.content()
    shown = [fragment for fragment in secret_fragments(*secret_values) if fragment in html]
    assert not shown, f"{where}: secret material in the page source: {shown}"


def run_tool(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stderr}"
    return done.stdout


def wait_for_run(staff: Staff, final_status: str, *, seen_live: bool) -> int:
    """On a run's page (just after Run now): watch it refresh itself until it finishes.

    ``seen_live``: the first load must show the run unfinished, with the notice that the
    page refreshes (a run that sleeps a few seconds, like an import's stability check; a
    quick export may be over before its page is first shown). Returns how many times the
    page loaded, the first load included; this function never reloads it.
    """
    from playwright.sync_api import expect

    page = staff.page
    loads = []

    def loaded(_: Any) -> None:
        loads.append(page.url)

    page.on("load", loaded)
    if seen_live:
        expect(page.locator(".run-live")).to_contain_text("the page refreshes every 3 seconds")
    staff.shot("run page, following the run")
    # A quick run may go from queued to finished between two refreshes: no "running" then.
    page.locator(".run-status:not(.run-queued)").wait_for(timeout=RUN_TIMEOUT_MS)
    if page.locator(".run-status.run-running").count():
        staff.shot("run running")
    finished = page.locator(".run-status:not(.run-queued):not(.run-running)")
    finished.wait_for(timeout=RUN_TIMEOUT_MS)
    page.remove_listener("load", loaded)
    staff.shot("run finished")
    status = finished.get_attribute("class") or ""
    if f"run-{final_status}" not in status:
        raise AssertionError(
            f"run ended {status!r}, wanted {final_status}:\n"
            + staff.readonly("error_display").inner_text()
            + "\n"
            + staff.readonly("log_display").inner_text()
        )
    expect(page.locator(".run-live")).to_have_count(0)  # no more refreshing
    return len(loads) + 1


# --------------------------------------------------------------------------- the flows


def create_partner(staff: Staff) -> str:
    from playwright.sync_api import expect

    page = staff.page
    page.goto("/admin/")
    page.locator("tr.model-partner a.addlink").click()
    page.locator("#id_name").press_sequentially(PARTNER)  # typed: the slug follows (JS)
    expect(page.locator("#id_slug")).to_have_value(PARTNER_SLUG)  # prepopulated by the JS
    staff.shot("new partner")
    staff.save()
    staff.expect_saved()
    staff.shot("partner created")
    return PARTNER


def test_1_client_sftp_authorization_with_pgp_private_key(staff: Staff, sshd, tmp_path: Path):
    from playwright.sync_api import expect

    page, stack = staff.page, staff.stack
    staff.log_in(screenshots=True)
    partner = staff.ensure_partner()

    # The partner's SSH key, as PuTTYgen saves it, and the OpenSSH export the error asks for.
    ppk = tmp_path / "partner.ppk"
    run_tool("puttygen", "-q", "-t", "ed25519", "--new-passphrase", os.devnull, "-o", ppk)
    key_passphrase = "Key-" + secrets.token_urlsafe(12)
    (tmp_path / "passphrase").write_text(key_passphrase + "\n")
    openssh = tmp_path / "partner_openssh"
    run_tool(
        "puttygen", ppk, "-O", "private-openssh", "--new-passphrase", tmp_path / "passphrase",
        "-o", openssh,
    )  # fmt: skip
    sshd.authorize(run_tool("puttygen", ppk, "-O", "public-openssh"))
    (sshd.data_dir / "members-2025-01.csv").write_text("email\nada@example.com\n")
    password = "Sftp-" + secrets.token_urlsafe(12)
    pgp = staff.keys.protected  # a passphrase-protected PGP key: decrypts what we import
    secret_values = [
        password,
        ppk.read_text(),
        openssh.read_text(),
        key_passphrase,
        pgp.secret,
        pgp.passphrase,
    ]

    def fill_secrets(private_key: str) -> None:
        page.fill("#id_password", password)
        page.fill("#id_private_key", private_key)
        page.fill("#id_passphrase", key_passphrase)
        page.fill("#id_pgp_private_key", pgp.secret)
        page.fill("#id_pgp_passphrase", pgp.passphrase)

    page.goto("/admin/authorizations/authorization/")
    page.locator(".object-tools a.addlink").click()
    expect(page.locator("#content h1")).to_have_text("Add authorization: choose a method")
    staff.shot("choose a method")
    page.get_by_role("link", name="Client SFTP server with PGP private key", exact=True).click()
    expect(page.locator("#content-main")).to_contain_text(
        "Method: Client SFTP server with PGP private key"
    )
    expect(page.locator("#id_public_keys")).to_have_count(0)  # only this method's fields
    expect(page.locator("label[for=id_pgp_private_key]")).to_have_text("PGP private key:")
    page.select_option("#id_partner", label=partner)
    page.fill("#id_label", "Acme outbound server")
    page.fill("#id_host", "127.0.0.1")
    page.fill("#id_port", str(sshd.port))
    page.fill("#id_username", sshd.user)
    fill_secrets(ppk.read_text())
    staff.shot("form with a PuTTY key")
    staff.save()

    expect(page.locator(".errornote")).to_be_visible()
    errors = staff.field_errors("private_key")
    assert "PuTTY format" in errors and "private-openssh" in errors, errors
    staff.shot("PuTTY key refused")
    expect_no_secret(page, secret_values, "the refused form")
    expect(page.locator("#id_host")).to_have_value("127.0.0.1")  # the rest is kept
    fill_secrets(openssh.read_text())  # secrets are never sent back: typed again
    staff.shot("form with the OpenSSH key")
    staff.save()
    staff.expect_saved()
    staff.shot("authorization saved")

    expect_no_secret(page, secret_values, "the authorization's page")
    for name in ("password", "private_key", "passphrase", "pgp_private_key", "pgp_passphrase"):
        expect(page.locator(f".field-{name} .help")).to_contain_text("A value is stored")
    expect(staff.readonly("pgp_fingerprint")).to_have_text(pgp.fingerprint)
    expect(staff.readonly("private_key_fingerprint")).to_have_text(
        run_tool("ssh-keygen", "-l", "-f", openssh, "-P", key_passphrase).split()[1]
    )
    expect(staff.readonly("host_key_fingerprint")).not_to_contain_text("SHA256")  # not yet

    page.click("#test-connection")
    result = page.locator(".messagelist .success")
    expect(result).to_contain_text(
        f"Acme outbound server: connected to 127.0.0.1:{sshd.port} as '{sshd.user}' with "
        f"public key; the login folder has 1 entry; host key {sshd.host_key_fingerprint} is "
        "now pinned (first successful connection)"
    )
    expect(page.locator(".messagelist .error")).to_have_count(0)
    expect(staff.readonly("host_key_fingerprint")).to_have_text(sshd.host_key_fingerprint)
    expect(staff.readonly("last_test")).to_contain_text("OK at")
    staff.shot("test connection succeeded")
    expect_no_secret(page, secret_values, "the page after Test connection")

    page.goto("/admin/authorizations/authorization/")
    expect(page.locator("#result_list")).to_contain_text("password ••••, key ••••")
    expect_no_secret(page, secret_values, "the authorization list")
    staff.shot("authorization list")
    assert password not in stack.output(), "a secret reached a server log"


def managed_account_flow(staff: Staff) -> tuple[str, Path]:
    """Flow 2; returns the account's username and the decrypted private key's path."""
    from playwright.sync_api import expect

    page, stack, journey = staff.page, staff.stack, staff.journey
    partner = staff.ensure_partner()
    page.goto("/admin/authorizations/authorization/add/")
    page.get_by_role("link", name="Managed SFTP server account", exact=True).click()
    page.select_option("#id_partner", label=partner)
    page.fill("#id_label", ACCOUNT_LABEL)
    page.fill("#id_username", ACCOUNT)
    page.fill("#id_password", "acmedrop")
    staff.save()
    errors = staff.field_errors("password")
    assert "The password must" in errors, errors
    assert "include an uppercase letter" in errors and "include a number" in errors, errors
    expect(page.locator(".field-password .errorlist li")).to_have_count(1)  # the rule, only
    staff.shot("weak password refused")
    strong = "Drop-" + secrets.token_urlsafe(9) + "7a!"
    page.fill("#id_password", strong)
    staff.save()
    staff.expect_saved()
    expect(staff.readonly("password_set")).to_have_text("yes (stored as a hash)")
    expect(staff.readonly("server_address")).to_contain_text(
        f"sftp -P {stack.sftp_port} {ACCOUNT}@127.0.0.1 — host key SHA256:"
    )
    expect_no_secret(page, [strong], "the managed account's page")
    staff.shot("managed account saved")
    account_path = urllib.parse.urlsplit(page.url).path

    # Generating a key pair needs the partner's PGP public key; the message says so.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#generate-ssh-key")
    expect(page.locator(".messagelist .error")).to_contain_text("has no PGP public key")
    staff.shot("no PGP key yet")

    staff.open_change_page("/admin/authorizations/partner/", partner)
    page.fill("#id_pgp_public_key", staff.keys.plain.public)
    staff.save()
    staff.expect_saved()
    expect(staff.readonly("pgp_fingerprint")).to_have_text(staff.keys.plain.fingerprint)
    staff.shot("partner has a PGP public key")

    staff.open_change_page("/admin/authorizations/authorization/", ACCOUNT_LABEL)
    assert urllib.parse.urlsplit(page.url).path == account_path
    dialogs = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_download() as download_info:
        page.click("#generate-ssh-key")
    download = download_info.value
    assert download.suggested_filename == f"{ACCOUNT}-ssh-ed25519-key.asc"
    assert dialogs and "cannot be shown again" in dialogs[0]
    armored = Path(download.path()).read_bytes()
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert b"OPENSSH PRIVATE KEY" not in armored

    private = gpg_decrypt(armored, staff.keys.plain.secret).decode()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    key_path = journey.work / f"{ACCOUNT}_ed25519"
    key_path.write_text(private)
    key_path.chmod(0o600)
    page.reload()
    expect(page.locator("#id_public_keys")).to_contain_text(f"{ACCOUNT}@lyticsops")
    expect_no_secret(page, [private], "the account's page after the key was generated")
    staff.shot("public key installed")

    listing = stack.sftp(ACCOUNT, key_path, "ls -1\n")
    assert listing.returncode == 0, listing.stderr
    assert {"inbound", "outbound"} <= set(listing.stdout.split()), listing.stdout
    return ACCOUNT, key_path


def test_2_managed_account_and_generated_key(staff: Staff):
    staff.log_in()
    username, key_path = staff.ensure_account()
    assert username == ACCOUNT and key_path.exists()


def test_3_api_client_secret_shown_once(staff: Staff):
    from playwright.sync_api import expect

    page, stack = staff.page, staff.stack
    staff.log_in()
    partner = staff.ensure_partner()
    page.goto("/admin/authorizations/apiclient/")
    page.locator(".object-tools a.addlink").click()
    page.select_option("#id_partner", label=partner)
    page.fill("#id_name", "Acme CRM sync")
    page.check("input[name=scopes][value='jobs:read']")
    page.check("input[name=scopes][value='sftp:read']")
    staff.shot("new API client")
    staff.save(continue_editing=False)

    box = page.locator("#new-secret-box")
    expect(box).to_be_visible()
    expect(box).to_contain_text("shown this once")
    client_id = page.input_value("#client-id-value")
    secret = page.input_value("#new-secret-value")
    assert len(secret) == 64 and client_id, (client_id, secret)
    page.click("#copy-secret")
    expect(page.locator("#copy-status")).to_have_text("Copied.", use_inner_text=True)
    assert page.evaluate("navigator.clipboard.readText()") == secret
    staff.shot("secret shown once and copied")

    page.reload()
    expect(box).to_have_count(0)
    expect(staff.readonly("secret")).to_have_text(secret[:4] + "…")
    expect(staff.readonly("client_id")).to_have_text(client_id)
    assert secret not in page.content()
    staff.shot("secret masked after reload")

    # The partner's machine trades the copied secret for a token, and uses it.
    status, token = stack.http(
        "POST",
        "/api/v1/idp/oauth2/token",
        form={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": page.evaluate("navigator.clipboard.readText()"),
        },
    )
    assert status == 200, token
    assert token["token_type"] == "Bearer" and token["scope"] == "jobs:read sftp:read"
    status, me = stack.http(
        "GET", "/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert status == 200, me
    assert me["partner"]["slug"] == PARTNER_SLUG and me["client"]["client_id"] == client_id
    status, refused = stack.http(
        "POST",
        "/api/v1/idp/oauth2/token",
        form={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret[:4] + "…",  # what the page shows now is no secret
        },
    )
    assert status == 401 and refused["error"] == "invalid_client", refused


def import_flow(staff: Staff) -> int:
    """Flow 4; returns the run's id."""
    from playwright.sync_api import expect

    page, stack, journey = staff.page, staff.stack, staff.journey
    username, key_path = staff.ensure_account()
    page.goto("/admin/transfers/importjob/")
    page.locator(".object-tools a.addlink").click()
    page.select_option("#id_partner", label=PARTNER)
    page.select_option("#id_authorization", label=f"{ACCOUNT_LABEL} (Managed SFTP server account)")
    page.fill("#id_name", "Acme members")
    page.fill("#id_folder", "inbound")
    page.fill("#id_pattern", "members-*.csv")
    page.select_option("#id_format", "csv")
    expect(page.locator("#id_identity_field")).to_have_value("email")
    staff.shot("new import job")
    staff.save()
    staff.expect_saved()
    staff.shot("import job saved")

    # The partner uploads its file with OpenSSH's sftp.
    local = journey.work / IMPORT_FILE
    local.write_text(MEMBERS_CSV, encoding="utf-8")
    upload = stack.sftp(username, key_path, f"put {local} inbound/{IMPORT_FILE}\nls -1 inbound\n")
    assert upload.returncode == 0, upload.stderr
    assert IMPORT_FILE in upload.stdout

    page.click("#run-now")
    expect(page).to_have_url(re.compile(r"/admin/transfers/run/\d+/change/$"))
    run_id = int(re.search(r"/run/(\d+)/", page.url).group(1))
    expect(page.locator(".messagelist .success")).to_contain_text(
        f"Run #{run_id} of “Acme members” is queued; this page follows it."
    )
    loads = wait_for_run(staff, "partial", seen_live=True)  # partial: one row was rejected
    assert loads >= 2, "the run page did not refresh itself while the run went"
    expected = {
        "files_seen": "1",
        "files_imported": "1",
        "files_skipped": "0",
        "files_failed": "0",
        "rows_read": "4",
        "rows_upserted": "3",
        "rows_rejected": "1",
    }
    for name, value in expected.items():
        expect(staff.readonly(name)).to_have_text(value)
    rejected = staff.readonly("rejected_rows_table").locator("tbody tr")
    expect(rejected).to_have_count(1)
    expect(rejected).to_contain_text(IMPORT_FILE)
    expect(rejected.locator("td").nth(1)).to_have_text("4")
    expect(rejected).to_contain_text("the identity field 'email' is empty")

    page.goto("/admin/profiles/profile/")
    for identity in ("ada@example.com", "bob@example.com", "chloe@example.com"):
        expect(page.locator("#result_list")).to_contain_text(identity)
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    staff.shot("profiles imported")
    return run_id


def test_4_import_job_run_now(staff: Staff):
    staff.log_in()
    assert staff.ensure_import() > 0


def test_5_audience_and_export_job(staff: Staff):
    from playwright.sync_api import expect

    page, stack = staff.page, staff.stack
    staff.log_in()
    username, key_path = staff.ensure_account()
    staff.ensure_import()  # the profiles the audience is made of

    page.goto("/admin/profiles/audience/")
    page.locator(".object-tools a.addlink").click()
    page.locator("#id_name").press_sequentially("French members")
    expect(page.locator("#id_slug")).to_have_value("french-members")
    page.fill("#id_conditions", '[{"field": "country", "op": "eq", "value": "FR"}]')
    expect(page.locator("#audience-preview")).to_have_text("2 profile(s)")  # live preview
    staff.shot("new audience with its preview")
    staff.save()
    staff.expect_saved()
    expect(staff.readonly("member_count")).to_have_text("2 profile(s)")
    staff.shot("audience saved")

    page.goto("/admin/transfers/exportjob/")
    page.locator(".object-tools a.addlink").click()
    page.select_option("#id_partner", label=PARTNER)
    page.select_option("#id_authorization", label=f"{ACCOUNT_LABEL} (Managed SFTP server account)")
    page.select_option("#id_audience", label="French members")
    page.fill("#id_name", "French members export")
    page.fill(
        "#id_fields",
        '[{"attribute": "identity", "column": "email"},'
        ' {"attribute": "first_name", "column": "First name"}]',
    )
    page.fill("#id_filename_template", "french-members-{YYYY}{MM}{DD}-{HH}{mm}{ss}.csv")
    page.fill("#id_folder", "outbound")
    staff.shot("new export job")
    staff.save()
    staff.expect_saved()
    staff.shot("export job saved")

    page.click("#run-now")
    expect(page).to_have_url(re.compile(r"/admin/transfers/run/\d+/change/$"))
    wait_for_run(staff, "succeeded", seen_live=False)
    expect(staff.readonly("rows_written")).to_have_text("2")
    file_name = staff.readonly("file_name").inner_text().strip()
    assert re.fullmatch(r"french-members-\d{8}-\d{6}\.csv", file_name), file_name

    # The partner finds the file on our SFTP server.
    local = staff.journey.work / file_name
    got = stack.sftp(username, key_path, f"ls -1 outbound\nget outbound/{file_name} {local}\n")
    assert got.returncode == 0, got.stderr
    assert f"outbound/{file_name}" in got.stdout.split()
    rows = local.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "email,First name"
    assert sorted(rows[1:]) == ["ada@example.com,Ada", "chloe@example.com,Chloé"]
