#!/usr/bin/env bash
# Install the system programs lyticsops needs when they are missing (Debian/Ubuntu):
# gpg (PGP), the OpenSSH client (sftp, ssh-keygen), OpenSSH's sshd (test fixtures and
# benchmarks), and with --test puttygen (tests of PuTTY-key validation) and Debian's
# chromium (the browser tests in tests/e2e drive /usr/bin/chromium with Playwright; no
# browser is downloaded). Safe to run repeatedly.
set -euo pipefail

need=()
command -v gpg >/dev/null || need+=(gnupg)
command -v gpgconf >/dev/null || need+=(gnupg)
command -v sftp >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if [ "${1:-}" = "--test" ]; then
  command -v puttygen >/dev/null || need+=(putty-tools)
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "Missing system packages: ${need[*]}. Install them with your package manager." >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing system packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
