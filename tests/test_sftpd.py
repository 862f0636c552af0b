"""The managed SFTP server (`sftpd`), driven by the real OpenSSH client and by paramiko."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import paramiko
import pytest
from django.contrib.auth.hashers import make_password
from django.utils import timezone

from tests.support.sftpd import ssh_client

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN_REFUSED = (paramiko.AuthenticationException,)
CONNECTION_REFUSED = (paramiko.SSHException, EOFError, OSError)
PASSWORD = "Corr3ct-horse!"
ROOT_DIR = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- logins


def test_key_login_and_file_operations_with_openssh(sftpd, make_sftp_account, sftpd_key, tmp_path):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    local = tmp_path / "report.csv"
    local.write_bytes(os.urandom(300_000))
    result = sftpd.run_sftp(
        "acme_ftp",
        key,
        f"""pwd
        put {local} inbound/report.csv
        ls -l inbound
        get inbound/report.csv {tmp_path}/back.csv
        rename inbound/report.csv inbound/renamed.csv
        mkdir inbound/archive
        rename inbound/renamed.csv inbound/archive/renamed.csv
        ls inbound/archive
        rm inbound/archive/renamed.csv
        rmdir inbound/archive
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "Remote working directory: /" in result.stdout
    assert "report.csv" in result.stdout
    assert (tmp_path / "back.csv").read_bytes() == local.read_bytes()
    home = sftpd.home("acme_ftp")
    assert sorted(os.listdir(home)) == ["inbound", "outbound"]
    assert os.listdir(home / "inbound") == []
    events = sftpd.events(username="acme_ftp")
    for expected in ("login_ok", "upload", "download", "rename", "mkdir", "delete", "rmdir"):
        assert expected in events
    upload = sftpd.audit(event="upload")[0]
    assert (upload.path, upload.bytes, upload.ip) == ("/inbound/report.csv", 300_000, "127.0.0.1")
    assert sftpd.audit(event="download")[0].bytes == 300_000
    sftpd.wait_for(lambda: "logout" in sftpd.events(username="acme_ftp"))


def test_password_login(sftpd, make_sftp_account):
    make_sftp_account(password=PASSWORD)
    with sftpd.connect("acme_ftp", password=PASSWORD) as sftp:
        assert sorted(sftp.listdir("/")) == ["inbound", "outbound"]
        with sftp.open("outbound/hello.txt", "w") as handle:
            handle.write(b"hello")
    assert (sftpd.home("acme_ftp") / "outbound" / "hello.txt").read_bytes() == b"hello"
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", password="Wrong-passw0rd!"):
            pass
    login = sftpd.audit(event="login_ok")[0]
    assert login.detail == "password" and login.account is not None
    failed = sftpd.audit(event="login_failed")
    assert [event.detail for event in failed] == ["wrong password (password)"]


def test_unknown_user_and_wrong_key_are_refused(sftpd, make_sftp_account, sftpd_key):
    make_sftp_account(public_keys=sftpd_key("good").public_line)
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", pkey=sftpd_key("other").pkey):
            pass
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("nobody", password=PASSWORD):
            pass
    sftpd.wait_for(lambda: len(sftpd.audit(event="login_failed")) == 2)
    details = sorted(event.detail for event in sftpd.audit(event="login_failed"))
    assert details[0].startswith("key not authorized (publickey SHA256:")
    assert details[1] == "unknown user (password)"


def test_allowlist_refuses_other_addresses_before_credentials(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    account = make_sftp_account(public_keys=key.public_line, allowed_ips=["192.0.2.0/24"])
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", pkey=key.pkey):
            pass
    refused = sftpd.audit(event="refused_ip")
    assert len(refused) == 1 and refused[0].account_id == account.pk
    assert "login_ok" not in sftpd.events()
    account.allowed_ips = ["10.0.0.0/8", "127.0.0.0/8"]
    account.save()  # (sftpd.events() above waited for the server to settle)
    with sftpd.connect("acme_ftp", pkey=key.pkey) as sftp:
        sftp.listdir("/")


@pytest.mark.parametrize(
    "change",
    [
        {"active": False},
        {"expires_at": "past"},
        {"partner_active": False},
    ],
    ids=["inactive", "expired", "partner-inactive"],
)
def test_inactive_or_expired_accounts_are_refused(sftpd, make_sftp_account, sftpd_key, change):
    key = sftpd_key()
    account = make_sftp_account(public_keys=key.public_line, password=PASSWORD)
    sftpd.settle()
    if "active" in change:
        account.active = False
    if "expires_at" in change:
        account.expires_at = timezone.now() - dt.timedelta(minutes=1)
    account.save()
    if "partner_active" in change:
        account.partner.active = False
        account.partner.save()
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", pkey=key.pkey):
            pass
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", password=PASSWORD):
            pass
    assert "login_ok" not in sftpd.events()
    assert not sftpd.home("acme_ftp").exists()


def test_password_change_and_key_removal_apply_at_next_login(sftpd, make_sftp_account, sftpd_key):
    first, second = sftpd_key("first"), sftpd_key("second")
    account = make_sftp_account(
        password=PASSWORD, public_keys=f"{first.public_line}\n{second.public_line}"
    )
    with sftpd.connect("acme_ftp", password=PASSWORD):
        pass
    with sftpd.connect("acme_ftp", pkey=first.pkey):
        pass
    sftpd.settle()
    account.password_hash = make_password("N3w-password!")
    account.public_keys = second.public_line
    account.save()
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", password=PASSWORD):
            pass
    with pytest.raises(LOGIN_REFUSED):
        with sftpd.connect("acme_ftp", pkey=first.pkey):
            pass
    with sftpd.connect("acme_ftp", password="N3w-password!"):
        pass
    with sftpd.connect("acme_ftp", pkey=second.pkey):
        pass


# --------------------------------------------------------------------------- the jail


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder next to the SFTP root that no client may read or change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"top secret")
    return folder


def test_escape_attempts_touch_nothing_outside_the_home(
    sftpd, make_sftp_account, sftpd_key, outside, tmp_path
):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    with sftpd.connect("acme_ftp", pkey=key.pkey):
        pass  # creates the home
    home = sftpd.home("acme_ftp")
    (home / "inbound" / "dir-link").symlink_to(outside)
    (home / "inbound" / "file-link").symlink_to(outside / "secret.txt")
    before_outside, before_tmp = sftpd.tree(outside), sorted(os.listdir(tmp_path))

    with sftpd.connect("acme_ftp", pkey=key.pkey) as sftp:
        # ".." stops at the home, and absolute paths are inside it.
        assert sftp.normalize("../../..") == "/"
        assert sorted(sftp.listdir("/../..")) == ["inbound", "outbound"]
        for path in ("../outside/secret.txt", "/etc/passwd", "../../../../etc/passwd"):
            with pytest.raises(FileNotFoundError):
                sftp.open(path)
        # Existing symlinks pointing outside are never followed.
        for attempt in (
            lambda: sftp.listdir("inbound/dir-link"),
            lambda: sftp.open("inbound/dir-link/secret.txt"),
            lambda: sftp.open("inbound/file-link"),
            lambda: sftp.stat("inbound/file-link"),
            lambda: sftp.open("inbound/dir-link/new.txt", "w"),
            lambda: sftp.remove("inbound/dir-link/secret.txt"),
            lambda: sftp.rename("inbound/dir-link/secret.txt", "inbound/stolen.txt"),
            lambda: sftp.mkdir("inbound/dir-link/newdir"),
            lambda: sftp.open("inbound/file-link", "w"),  # would write through the link
        ):
            with pytest.raises(PermissionError):
                attempt()
        with pytest.raises(IOError):
            sftp.readlink("inbound/file-link")  # would reveal the outside path
        # No new symlinks, no NUL bytes, no over-long names.
        with pytest.raises(PermissionError):
            sftp.symlink("/etc/passwd", "inbound/passwd")
        with pytest.raises(PermissionError):
            sftp.symlink("../../outside", "inbound/up")
        with pytest.raises(PermissionError):
            sftp.open("inbound/evil\x00.txt", "w")
        with pytest.raises(IOError, match="too long"):
            sftp.open("inbound/" + "a" * 256, "w")
        with pytest.raises(IOError, match="too long"):
            sftp.open("inbound/" + "/".join(["d" * 200] * 21), "w")
        with sftp.open("../../escaped.txt", "w") as handle:
            handle.write(b"stays inside")

    assert sftpd.tree(outside) == before_outside
    assert sorted(os.listdir(tmp_path)) == before_tmp
    assert (home / "escaped.txt").read_bytes() == b"stays inside"
    assert sorted(os.listdir(home / "inbound")) == ["dir-link", "file-link"]
    refused = sftpd.audit(event="refused_path")
    assert len(refused) >= 10
    assert any("symlink" in event.detail for event in refused)
    assert any("NUL" in event.detail for event in refused)


def test_escape_attempts_with_openssh(sftpd, make_sftp_account, sftpd_key, outside, tmp_path):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    local = tmp_path / "payload.txt"
    local.write_text("payload")
    before = sftpd.tree(outside)
    result = sftpd.run_sftp(
        "acme_ftp",
        key,
        f"""-cd ../../..
        pwd
        -put {local} ../../outside/payload.txt
        -put {local} /../../outside/payload2.txt
        put {local} ../../../landed.txt
        -ln -s {outside} inbound/link
        -get ../outside/secret.txt {tmp_path}/stolen.txt
        -get /etc/passwd {tmp_path}/passwd
        ls -a /
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "Remote working directory: /\n" in result.stdout
    assert sftpd.tree(outside) == before
    assert not (tmp_path / "stolen.txt").exists() and not (tmp_path / "passwd").exists()
    home = sftpd.home("acme_ftp")
    # As if the home were "/": "/../../outside" is a folder of the home (that does not
    # exist), and "../../../landed.txt" is in the home itself.
    assert (home / "landed.txt").read_text() == "payload"
    assert sorted(os.listdir(home)) == ["inbound", "landed.txt", "outbound"]
    assert os.listdir(home / "inbound") == []


def test_temp_files_are_hidden_and_untouchable(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    with sftpd.connect("acme_ftp", pkey=key.pkey) as sftp:
        handle = sftp.open("inbound/data.csv", "w")
        handle.write(b"a,b\n")
        handle.flush()
        inbound = sftpd.home("acme_ftp") / "inbound"
        (temp,) = sftpd.temp_uploads(inbound)
        assert temp.startswith(".data.csv.") and temp.endswith(".upload")
        assert sftp.listdir("inbound") == []  # neither the temp file nor the real name yet
        with pytest.raises(PermissionError):
            sftp.open(f"inbound/{temp}")
        with pytest.raises(PermissionError):
            sftp.remove(f"inbound/{temp}")
        handle.close()
        assert sftp.listdir("inbound") == ["data.csv"]
        assert sftpd.temp_uploads(inbound) == []
        assert (inbound / "data.csv").read_bytes() == b"a,b\n"


def test_jail_path_mapping(tmp_path):
    from sftpd.fs import Jail, PathEscape, SftpRefusal

    home = tmp_path / "home"
    (home / "inbound").mkdir(parents=True)
    (home / "inbound" / "up").symlink_to(tmp_path)
    jail = Jail(home)
    assert jail.normalize("") == jail.normalize(".") == jail.normalize("/") == "/"
    assert jail.normalize("../../etc/passwd") == "/etc/passwd"
    assert jail.normalize("//etc/./x/../passwd") == "/etc/passwd"
    assert jail.resolve("/../inbound").real == str(home.resolve() / "inbound")
    with pytest.raises(PathEscape):
        jail.resolve("inbound/up/anything")
    assert jail.resolve("inbound/up", follow=False).vpath == "/inbound/up"  # the link itself
    with pytest.raises(PathEscape):
        jail.normalize("a\x00b")
    with pytest.raises(SftpRefusal, match="too long"):
        jail.normalize("é" * 128)  # 256 bytes in UTF-8
    with pytest.raises(SftpRefusal, match="upload in progress"):
        jail.normalize("inbound/.x.0123456789abcdef.upload")


def test_stale_temp_uploads_are_swept_young_ones_kept(tmp_path):
    from sftpd.fs import sweep_stale_uploads, temp_name

    folder = tmp_path / "acme" / "inbound"
    folder.mkdir(parents=True)
    old, young = folder / temp_name("old.csv"), folder / temp_name("young.csv")
    for path in (old, young, folder / "keep.csv"):
        path.write_text("x")
    os.utime(old, (0, 0))
    assert sweep_stale_uploads(tmp_path, older_than=3600) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([young.name, "keep.csv"])


# --------------------------------------------------------------------------- uploads


def test_killed_openssh_upload_leaves_no_file(sftpd, make_sftp_account, sftpd_key, tmp_path):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    inbound = sftpd.home("acme_ftp") / "inbound"
    client = subprocess.Popen(
        sftpd.command("acme_ftp", key, "-l", "4096", "-b", "-"),  # 4 Mbit/s
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        client.stdin.write(f"put {big} inbound/big.bin\n")
        client.stdin.close()
        sftpd.wait_for(lambda: inbound.exists() and sftpd.temp_uploads(inbound), timeout=20)
        sftpd.wait_for(lambda: _size(inbound / sftpd.temp_uploads(inbound)[0]) > 0)
    finally:
        client.kill()
        client.wait()
    sftpd.wait_for(lambda: not sftpd.temp_uploads(inbound))
    assert os.listdir(inbound) == []
    sftpd.wait_for(lambda: sftpd.events(event="upload_aborted"))
    assert "upload" not in sftpd.events()


def test_transport_closed_mid_upload_leaves_no_file(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    client = ssh_client(sftpd.port, "acme_ftp", pkey=key.pkey)
    sftp = client.open_sftp()
    handle = sftp.open("outbound/partial.bin", "w")
    handle.write(os.urandom(200_000))
    handle.flush()
    outbound = sftpd.home("acme_ftp") / "outbound"
    assert sftpd.temp_uploads(outbound)
    client.get_transport().close()  # no CLOSE for the file
    sftpd.wait_for(lambda: not sftpd.temp_uploads(outbound))
    assert os.listdir(outbound) == []
    aborted = sftpd.wait_for(lambda: sftpd.audit(event="upload_aborted"))
    assert aborted[0].path == "/outbound/partial.bin" and aborted[0].bytes == 200_000


def test_resume_keeps_old_content_until_close(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    with sftpd.connect("acme_ftp", pkey=key.pkey) as sftp:
        with sftp.open("inbound/log.txt", "w") as handle:
            handle.write(b"first\n")
        handle = sftp.open("inbound/log.txt", "a")
        handle.write(b"second\n")
        handle.flush()
        real = sftpd.home("acme_ftp") / "inbound" / "log.txt"
        assert real.read_bytes() == b"first\n"  # readers never see a partial file
        handle.close()
        assert real.read_bytes() == b"first\nsecond\n"
        with pytest.raises(IOError):
            sftp.open("inbound/log.txt", "wx")  # O_EXCL on an existing file


# --------------------------------------------------------------------------- limits


def test_quota_refuses_writes_past_it(sftpd, make_sftp_account, sftpd_key, tmp_path):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line, quota_bytes=100_000)
    with sftpd.connect("acme_ftp", pkey=key.pkey) as sftp:
        sftp.putfo(io.BytesIO(b"x" * 60_000), "inbound/one.bin")
        handle = sftp.open("inbound/two.bin", "w")
        with pytest.raises(PermissionError, match="Quota exceeded"):
            handle.write(b"y" * 60_000)  # paramiko sends it as 32 KiB writes
        handle.close()  # refused as well (paramiko ignores errors at close)
        assert sorted(sftp.listdir("inbound")) == ["one.bin"]  # no partial two.bin
        sftp.remove("inbound/one.bin")
        sftp.putfo(io.BytesIO(b"y" * 60_000), "inbound/two.bin")  # room again
    local = tmp_path / "big.bin"
    local.write_bytes(b"z" * 50_000)
    result = sftpd.run_sftp("acme_ftp", key, f"put {local} inbound/big.bin\n")
    assert result.returncode != 0
    inbound = sftpd.home("acme_ftp") / "inbound"
    assert os.listdir(inbound) == ["two.bin"]
    assert sftpd.events(event="refused_quota") == ["refused_quota"] * 2


def test_max_sessions(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line, max_sessions=1)
    with sftpd.connect("acme_ftp", pkey=key.pkey) as first:
        first.listdir("/")
        with pytest.raises((paramiko.ChannelException, paramiko.SSHException)):
            with sftpd.connect("acme_ftp", pkey=key.pkey):
                pass
    from sftpd.models import SftpSession

    sftpd.settle()
    assert not SftpSession.objects.exists()
    with sftpd.connect("acme_ftp", pkey=key.pkey) as again:
        again.listdir("/")
    assert sftpd.events(event="refused_sessions") == ["refused_sessions"]


def test_fifty_concurrent_openssh_clients(sftpd, make_sftp_account, sftpd_key, tmp_path):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line, max_sessions=60)
    local = tmp_path / "file.bin"
    local.write_bytes(os.urandom(256 * 1024))
    clients = [
        subprocess.Popen(
            sftpd.command("acme_ftp", key, "-b", "-"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(50)
    ]
    for number, client in enumerate(clients):
        client.stdin.write(f"put {local} inbound/f{number}.bin\nls inbound\n")
        client.stdin.close()
    failures = [client.stderr.read() for client in clients if client.wait(timeout=90) != 0]
    assert failures == []
    inbound = sftpd.home("acme_ftp") / "inbound"
    assert len(os.listdir(inbound)) == 50
    assert all((inbound / f"f{n}.bin").read_bytes() == local.read_bytes() for n in range(50))


# --------------------------------------------------------------------------- bans


def test_ban_after_threshold(sftpd, make_sftp_account, settings):
    from sftpd.models import SftpBan

    settings.MANAGED_SFTP_BAN_THRESHOLD = 3
    make_sftp_account(password=PASSWORD)
    for _ in range(3):
        with pytest.raises(LOGIN_REFUSED):
            with sftpd.connect("acme_ftp", password="Wrong-passw0rd!"):
                pass
    sftpd.settle()
    ban = SftpBan.objects.get()
    assert ban.ip == "127.0.0.1" and ban.level == 1 and ban.is_active
    # The right password no longer helps: the connection is refused before SSH.
    with pytest.raises(CONNECTION_REFUSED):
        with sftpd.connect("acme_ftp", password=PASSWORD):
            pass
    assert sftpd.events(event="banned") == ["banned"]
    assert "refused_banned" in sftpd.events()
    # Deleting the ban (admin) lifts it.
    sftpd.settle()
    ban.delete()
    sftpd.server.clear_ban_cache()
    with sftpd.connect("acme_ftp", password=PASSWORD) as sftp:
        sftp.listdir("/")


def test_failures_for_one_username_ban_each_further_ip(transactional_db):
    from sftpd import store
    from sftpd.conf import BanPolicy

    policy = BanPolicy(threshold=5, username_threshold=3)
    assert store.record_failure("198.51.100.1", "acme_ftp", policy) is None
    assert store.record_failure("198.51.100.2", "ACME_ftp", policy) is None
    ban = store.record_failure("198.51.100.3", "acme_ftp", policy)
    assert ban is not None and ban.ip == "198.51.100.3"
    assert "for user 'acme_ftp'" in ban.reason


def test_ban_duration_doubles_and_is_capped(transactional_db):
    from sftpd import store
    from sftpd.conf import BanPolicy

    policy = BanPolicy(threshold=2, duration=600, max_duration=2000, memory=86400)
    now = timezone.now()
    durations = []
    for _ in range(4):
        store.record_failure("203.0.113.9", "x", policy, now=now)
        ban = store.record_failure("203.0.113.9", "x", policy, now=now)
        durations.append((ban.banned_until - now).total_seconds())
        now = ban.banned_until + dt.timedelta(seconds=1)
    assert durations == [600, 1200, 2000, 2000]
    # Long after the last ban, the next one starts over.
    now += dt.timedelta(days=2)
    store.record_failure("203.0.113.9", "x", policy, now=now)
    ban = store.record_failure("203.0.113.9", "x", policy, now=now)
    assert ban.level == 1


def test_several_keys_offered_count_as_one_failure(sftpd, make_sftp_account, sftpd_key, settings):
    from sftpd.models import SftpLoginFailure

    settings.MANAGED_SFTP_BAN_THRESHOLD = 2
    make_sftp_account(public_keys=sftpd_key("good").public_line)
    others = [sftpd_key(f"other{n}") for n in range(3)]
    identities = [arg for other in others[1:] for arg in ("-o", f"IdentityFile={other.path}")]
    result = subprocess.run(
        sftpd.command("acme_ftp", others[0], *identities, "-b", "-"),
        input="ls\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    sftpd.settle()
    assert SftpLoginFailure.objects.count() == 1
    assert "banned" not in sftpd.events()


# --------------------------------------------------------------------------- shutdown


def test_sigterm_stops_runsftpd_and_removes_temp_files(tmp_path, sftpd_key, sftpd_tools):
    key = sftpd_key()
    port = sftpd_tools.free_port()
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MANAGED_SFTP_PORT": str(port),
        "MANAGED_SFTP_HOST": "127.0.0.1",
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(ROOT_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=120)
    subprocess.run(
        [*manage, "shell", "-c", _CREATE_ACCOUNT.format(key=key.public_line)],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    server = subprocess.Popen(
        [*manage, "runsftpd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client = None
    try:
        assert "listening on 127.0.0.1" in server.stdout.readline()
        assert server.stdout.readline().startswith("Host key fingerprint: SHA256:")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(4 * 1024 * 1024))
        client = subprocess.Popen(
            sftpd_tools.sftp_command(port, "acme_ftp", key, "-l", "2048", "-b", "-"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        client.stdin.write(f"put {big} inbound/big.bin\n")
        client.stdin.close()
        inbound = tmp_path / "var" / "sftp" / "acme_ftp" / "inbound"
        sftpd_tools.wait_for(
            lambda: inbound.exists() and sftpd_tools.temp_uploads_in(inbound), timeout=30
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr.read()
        assert "stopped" in server.stdout.read()
        assert os.listdir(inbound) == []
        assert client.wait(timeout=10) != 0
    finally:
        for process in (server, client):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


_CREATE_ACCOUNT = """
from authorizations.models import Authorization, Method, Partner
partner = Partner.objects.create(name="Acme", slug="acme")
Authorization.objects.create(
    partner=partner, method=Method.MANAGED_SFTP, label="x", username="acme_ftp",
    public_keys="{key}",
)
"""


# --------------------------------------------------------------------------- host key


def test_host_key_is_created_once_with_mode_0600(tmp_path, settings):
    from sftpd.hostkey import fingerprint, host_key_fingerprint, load_or_create_host_key

    path = tmp_path / "keys" / "ssh_host_key"
    first = load_or_create_host_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.get_name() == "ssh-ed25519"
    second = load_or_create_host_key(path)
    assert fingerprint(first) == fingerprint(second)
    settings.MANAGED_SFTP_HOST_KEY = path
    assert host_key_fingerprint() == fingerprint(first)
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    )
    assert fingerprint(first) in listed.stdout


def test_server_presents_the_configured_host_key(sftpd, make_sftp_account, sftpd_key):
    from sftpd.hostkey import fingerprint

    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    transport = paramiko.Transport(("127.0.0.1", sftpd.port))
    try:
        transport.connect(username="acme_ftp", pkey=key.pkey)
        assert fingerprint(transport.get_remote_server_key()) == sftpd.server.fingerprint
    finally:
        transport.close()


def test_many_threads_of_one_connection_cannot_exceed_channels(sftpd, make_sftp_account, sftpd_key):
    key = sftpd_key()
    make_sftp_account(public_keys=key.public_line)
    client = ssh_client(sftpd.port, "acme_ftp", pkey=key.pkey)
    try:
        opened = []
        for _ in range(sftpd.server.config.max_channels):
            opened.append(client.open_sftp())
        with pytest.raises(paramiko.SSHException):
            client.open_sftp()
        results = []

        def work(sftp):
            results.append(sorted(sftp.listdir("/")))

        threads = [threading.Thread(target=work, args=(s,)) for s in opened]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [["inbound", "outbound"]] * len(opened)
    finally:
        client.close()


# --------------------------------------------------------------------------- admin


def test_admin_audit_log_is_read_only_and_bans_deletable(rf, admin_user):
    from django.contrib import admin

    from sftpd.models import SftpAuditEvent, SftpBan, SftpSession

    request = rf.get("/")
    request.user = admin_user
    audit = admin.site._registry[SftpAuditEvent]
    assert not audit.has_add_permission(request)
    assert not audit.has_change_permission(request)
    assert not audit.has_delete_permission(request)
    assert audit.has_view_permission(request)
    bans = admin.site._registry[SftpBan]
    assert bans.has_delete_permission(request) and not bans.has_add_permission(request)
    assert not admin.site._registry[SftpSession].has_delete_permission(request)


def test_admin_pages_render(admin_client):
    for name in ("sftpauditevent", "sftpban", "sftpsession"):
        assert admin_client.get(f"/admin/sftpd/{name}/").status_code == 200


# --------------------------------------------------------------------------- commands


def _sshkeys_ready() -> bool:
    try:
        from transfers import sshkeys

        return callable(getattr(sshkeys, "parse_public_keys", None))
    except ImportError:
        return False


@pytest.mark.skipif(not _sshkeys_ready(), reason="transfers.sshkeys not available yet")
def test_create_managed_sftp_account_command(partner, sftpd_key, tmp_path):
    from django.core.management import call_command

    from authorizations.models import Authorization

    keyfile = tmp_path / "id.pub"
    keyfile.write_text(sftpd_key().public_line + "\n")
    out = io.StringIO()
    call_command(
        "create_managed_sftp_account",
        "acme",
        "acme_ftp",
        "--password-stdin",
        "--public-key-file",
        str(keyfile),
        "--allowed-ips",
        "192.0.2.0/24, 10.1.0.0/16",
        stdin=io.StringIO(PASSWORD + "\n"),
        stdout=out,
    )
    account = Authorization.objects.get(username="acme_ftp")
    assert account.label == "Managed SFTP acme_ftp"
    assert account.check_account_password(PASSWORD)
    assert account.allowed_ips == ["192.0.2.0/24", "10.1.0.0/16"]
    assert account.public_keys.startswith("ssh-ed25519 ")
    assert "Created managed SFTP account 'acme_ftp'" in out.getvalue()


@pytest.mark.skipif(not _sshkeys_ready(), reason="transfers.sshkeys not available yet")
def test_create_managed_sftp_account_reports_each_field_error(partner):
    from django.core.management import CommandError, call_command

    from authorizations.models import Authorization

    err = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command(
            "create_managed_sftp_account",
            "acme",
            "x!",
            "--password-stdin",
            "--allowed-ips",
            "not-an-ip",
            stdin=io.StringIO("weak\n"),
            stderr=err,
        )
    assert raised.value.returncode == 1
    lines = err.getvalue().splitlines()
    assert any(line.startswith("username: ") for line in lines)
    assert any(line.startswith("password: ") for line in lines)
    assert any(line.startswith("allowed_ips: ") for line in lines)
    assert not Authorization.objects.exists()


def test_create_managed_sftp_account_unknown_partner(transactional_db):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="No partner"):
        call_command("create_managed_sftp_account", "nope", "acme_ftp")


# --------------------------------------------------------------------------- onboarding


def test_generate_account_keypair_encrypts_and_stores_only_the_public_half(
    make_sftp_account, monkeypatch
):
    from sftpd.onboarding import generate_account_keypair
    from transfers import pgp, sshkeys

    account = make_sftp_account()
    account.partner.pgp_public_key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...\n"
    account.partner.save()
    generated = {}

    def fake_generate(kind="ed25519", comment=""):
        generated["private"] = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{kind}\n"
        return generated["private"], f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE {comment}"

    def fake_encrypt(src, dst, public_key, armor=False):
        assert armor and public_key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        dst.write(b"-----BEGIN PGP MESSAGE-----\n" + src.read()[::-1] + b"\n")

    monkeypatch.setattr(sshkeys, "generate_keypair", fake_generate)
    monkeypatch.setattr(pgp, "encrypt_stream", fake_encrypt)
    armored = generate_account_keypair(account)
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    account.refresh_from_db()
    assert account.public_keys.endswith("acme_ftp@lyticsops")
    assert "PRIVATE" not in account.public_keys
    assert generated["private"].encode() not in armored


def test_generate_account_keypair_end_to_end_with_gpg(make_sftp_account, key_factory):
    from sftpd.onboarding import generate_account_keypair
    from transfers import pgp

    partner_key = key_factory.generate("SFTP Partner <sftp@example.com>")
    account = make_sftp_account()
    account.partner.pgp_public_key = partner_key.public
    account.partner.save()
    armored = generate_account_keypair(account)
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    plain = io.BytesIO()
    pgp.decrypt_stream(io.BytesIO(armored), plain, partner_key.secret, None)
    private = paramiko.Ed25519Key.from_private_key(io.StringIO(plain.getvalue().decode()))
    account.refresh_from_db()
    (line,) = account.public_keys.splitlines()
    assert line.split()[:2] == [private.get_name(), private.get_base64()]


def test_generate_account_keypair_needs_the_partners_pgp_key(make_sftp_account):
    from sftpd.onboarding import OnboardingError, generate_account_keypair

    account = make_sftp_account()
    with pytest.raises(OnboardingError, match="no PGP public key"):
        generate_account_keypair(account)
    account.refresh_from_db()
    assert account.public_keys == ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_one_address_cannot_take_every_connection_slot(sftpd, settings):
    import socket as socket_module

    settings.MANAGED_SFTP_MAX_CONNECTIONS_PER_IP = 3
    sftpd.server.config = sftpd.server.config.__class__(
        **{**sftpd.server.config.__dict__, "max_connections_per_ip": 3}
    )
    held = [socket_module.create_connection((sftpd.host, sftpd.port), timeout=5) for _ in range(3)]
    try:
        for sock in held:
            assert sock.recv(4).startswith(b"SSH-")  # each was served a banner
        extra = socket_module.create_connection((sftpd.host, sftpd.port), timeout=5)
        try:
            assert extra.recv(4) == b""  # closed without a banner
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
