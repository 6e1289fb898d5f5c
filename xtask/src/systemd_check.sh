#!/bin/bash
# The systemd checks of the kernels tier. Runs as a oneshot unit inside a Debian 12 system
# (mmdebstrap, no Rust anywhere) booted under QEMU with systemd as PID 1; installs the package
# `cargo xtask dist` built, and checks the unit. One line per step in /root/results/steps:
# "ok NAME: detail" or "FAIL NAME: detail". Written by `cargo xtask` (xtask/src/systemd_check.sh).
R=/root/results
mkdir -p $R
exec > $R/check.log 2>&1
set -x

step() { echo "$1 $2: $3" >> $R/steps; }
check() {
    local name=$1 detail=$2
    shift 2
    if "$@"; then step ok "$name" "$detail"; else step FAIL "$name" "$detail"; fi
}
json() { mailguard status --json 2>/dev/null | grep -o "\"$1\": *[^,]*" | head -1 | sed 's/.*: *//; s/"//g'; }
attached() { ip -d link show mg0 | grep -q "prog/xdp"; }
reachable() { ip netns exec client nc -z -w 3 198.18.0.1 "$1"; }
dropped() { ! reachable "$1"; }
waitfor() { for _ in $(seq 1 60); do "$@" && return 0; sleep 1; done; return 1; }
restarts() { systemctl show -p NRestarts --value mailguard; }
cap_sys_admin() {
    local pid caps
    pid=$(systemctl show -p MainPID --value mailguard)
    caps=$(awk '/^CapEff/ {print $2}' /proc/"$pid"/status)
    # CAP_SYS_ADMIN is capability 21.
    (( (16#$caps >> 21) & 1 ))
}

check "systemd" "PID 1 is $(cat /proc/1/comm), system $(systemctl is-system-running)" \
    test "$(cat /proc/1/comm)" = systemd
check "no Rust" "neither cargo nor rustc on this system" \
    sh -c '! command -v cargo && ! command -v rustc'

dpkg -i /root/mailguard.deb > $R/dpkg.log 2>&1
check "install" "dpkg -i $(basename "$(readlink -f /root/mailguard.deb)")" \
    dpkg-query -W -f '${Status}' mailguard
check "installed, not started" "enabled: $(systemctl is-enabled mailguard), active: $(systemctl is-active mailguard)" \
    sh -c '! systemctl -q is-enabled mailguard && ! systemctl -q is-active mailguard'

# The network: mg0 here, its peer in the namespace "client"; listeners on 25 and 3306.
modprobe veth
ip netns add client
ip link add mg0 type veth peer name mg0p netns client
ip addr add 198.18.0.1/24 dev mg0
ip link set mg0 up
ip -n client addr add 198.18.0.2/24 dev mg0p
ip -n client link set mg0p up
ip -n client link set lo up
# Native XDP on veth sees traffic when the peer has GRO on (or an XDP program).
ip netns exec client ethtool -K mg0p gro on 2>/dev/null || ip netns exec client sh -c 'echo no ethtool'
nc -lk 198.18.0.1 25 > /dev/null &
nc -lk 198.18.0.1 3306 > /dev/null &
sleep 1
check "network" "198.18.0.2 (client) reaches 198.18.0.1:3306 before mailguard" reachable 3306
sed -i 's/^interface = .*/interface = "mg0"/' /etc/mailguard/mailguard.toml

systemctl start mailguard
check "start" "systemctl start returned with the unit $(systemctl is-active mailguard) (Type=notify: READY=1 after attaching)" \
    systemctl -q is-active mailguard
check "protecting" "XDP on mg0, port 3306 dropped, port 25 passes" \
    sh -c "$(declare -f attached reachable dropped); attached && dropped 3306 && reachable 25"
check "capabilities" "the daemon runs without CAP_SYS_ADMIN (bounding set: $(systemctl show -p CapabilityBoundingSet --value mailguard))" \
    sh -c "$(declare -f cap_sys_admin); ! cap_sys_admin"
check "journal" "journalctl -u mailguard has the daemon's start" \
    sh -c 'journalctl -u mailguard --no-pager | grep -q "now guarding mg0"'

first=$(json program_id)
sed -i 's/^icmp_echo = .*/icmp_echo = "drop"/' /etc/mailguard/mailguard.toml
systemctl reload mailguard
waitfor sh -c "mailguard status --json | grep -q '\"icmp_echo\": \"drop\"'"
check "reload" "systemctl reload applied icmp_echo = \"drop\" in the same program ($first, now $(json program_id))" \
    sh -c "mailguard status --json | grep -q '\"icmp_echo\": \"drop\"' && [ '$first' = \"\$(mailguard status --json | grep -o '\"program_id\": *[0-9]*' | grep -o '[0-9]*$')\" ] && journalctl -u mailguard --no-pager | grep -q 'configuration reloaded'"

systemctl stop mailguard
check "stop keeps protection" "unit $(systemctl is-active mailguard); XDP still on mg0 and 3306 still dropped" \
    sh -c "$(declare -f attached reachable dropped); ! systemctl -q is-active mailguard && attached && dropped 3306"

systemctl start mailguard
second=$(json program_id)
check "start adopts" "active again; program $first replaced by $second in the pinned link" \
    sh -c "systemctl -q is-active mailguard && [ '$first' != '$second' ] && journalctl -u mailguard --no-pager | grep -q 'replaced the program attached to mg0'"

cp /etc/mailguard/mailguard.toml /root/good.toml
echo 'mail_ports = "not a list"' >> /etc/mailguard/mailguard.toml
systemctl restart mailguard
sleep 8
check "failed start" "bad configuration: unit $(systemctl is-active mailguard) after $(restarts) restarts (no loop), XDP still on mg0, 3306 still dropped" \
    sh -c "$(declare -f attached reachable dropped restarts); systemctl -q is-failed mailguard && [ \"\$(restarts)\" = 0 ] && attached && dropped 3306"
cp /root/good.toml /etc/mailguard/mailguard.toml
systemctl reset-failed mailguard
systemctl start mailguard
check "recovers" "the good configuration back: unit $(systemctl is-active mailguard)" \
    systemctl -q is-active mailguard

# Bans from the journal: five SASL failures Postfix would log (syslog's mail facility) ban
# their source; after a restart the journal is followed from the saved cursor (read once).
sed -i '/^\[bans\]/,/^\[bans.rules/ { s/^enabled = false/enabled = true/; s/^journal = false/journal = true/ }' /etc/mailguard/mailguard.toml
systemctl restart mailguard
waitfor sh -c "mailguard status --json | grep -q '\"sources\": *\[' && journalctl -u mailguard --no-pager | grep -q 'bans: banning from journal'"
sleep 2
for i in 1 2 3 4 5; do
    logger -p mail.warning -t 'postfix/submission/smtpd' --id=4242 "warning: unknown[198.18.0.77]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
done
banned77() { mailguard block list | grep '198.18.0.77/32' | grep -q 'ban:auth'; }
waitfor banned77
check "bans from the journal" "five SASL failures in the journal ban 198.18.0.77 ($(mailguard block list | grep 198.18.0.77 | tr -s ' '))" banned77
banned77 || {
    mailguard status --json | sed -n '/"bans"/,$p'
    journalctl -o json --no-pager SYSLOG_FACILITY=2 | tail -3
    ps -ef | grep -v grep | grep journalctl
}
mailguard block del 198.18.0.77/32
systemctl restart mailguard
sleep 5
check "journal cursor" "after block del and a restart, the same five lines are not read again" \
    sh -c "$(declare -f banned77); systemctl -q is-active mailguard && ! banned77"

dpkg -r mailguard > $R/dpkg-remove.log 2>&1
check "remove" "dpkg -r stops the unit and unloads: XDP gone, 3306 reachable" \
    sh -c "$(declare -f attached reachable); ! attached && reachable 3306"

journalctl -u mailguard --no-pager > $R/journal.log
echo done > $R/done
systemctl poweroff
