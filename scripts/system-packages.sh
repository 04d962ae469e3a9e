#!/usr/bin/env bash
# Debian packages the test suite uses beyond Python: Mosquitto (the sync tests start their
# own broker on a loopback port), PostgreSQL (the ledger tests start a throwaway cluster
# in a temporary directory) and Chromium with its driver (the pay-by-phone pages are
# tested in a real headless browser). Installed when we are root on a machine with apt; otherwise
# we say what is missing and those tests skip. No service is left running.
set -euo pipefail

need=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
# the pay-by-phone browser tests drive Debian's chromium through its chromedriver (Selenium)
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
[ -z "$need" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "note: missing Debian packages:$need — the sync/ledger tests that need them skip."
    echo "      install them with: sudo apt-get install$need"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's packages start their services unless policy-rc.d says no: the tests start
# their own broker and database and stop them.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy=1
fi
apt-get update -qq
apt-get install -y -qq $need
if [ -n "$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
