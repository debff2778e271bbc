#!/usr/bin/env bash
# Makes sure the system programs the local stack needs are present:
#   Java 17+ (Kafka; the registry also needs 21+), Maven, PostgreSQL 15+ server, Prometheus.
# Installs the missing Debian packages with apt-get when running as root; otherwise
# prints the exact command to run and fails.
set -euo pipefail

missing=()

have_pg() {
  local v
  for v in /usr/lib/postgresql/*/bin/initdb; do
    [ -x "$v" ] || continue
    v=${v#/usr/lib/postgresql/}; v=${v%%/*}
    [ "$v" -ge 15 ] 2>/dev/null && return 0
  done
  return 1
}

command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
have_pg || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v runuser >/dev/null || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's packages try to start their own services; the stack runs its own instances.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.erpcrm
chmod +x /usr/sbin/policy-rc.d.erpcrm
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
[ $had_policy -eq 1 ] || cp /usr/sbin/policy-rc.d.erpcrm /usr/sbin/policy-rc.d
apt-get install -y -qq --no-install-recommends "${missing[@]}"
[ $had_policy -eq 1 ] || rm -f /usr/sbin/policy-rc.d
rm -f /usr/sbin/policy-rc.d.erpcrm
echo "system packages: installed ${missing[*]}"
