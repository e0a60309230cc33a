#!/bin/bash
# Runs inside the container that tests/nspawn/run.sh boots, as a oneshot
# unit under a real systemd (PID 1): installs the agent the README's way and
# checks what an administrator sees. One line per check, "PASS name" or
# "FAIL name: why", then "RESULT ok" or "RESULT failed N". Lines go to
# stdout (the console) and to RESULTS, which the host reads afterwards.
#
#   checks.sh BINDIR [DEB]   BINDIR holds rexec-agent and ctl; DEB, when
#                            given, is the Debian package, installed with
#                            dpkg -i after install.sh's checks, then purged
#
# The image is a minimal Debian: no procps (ps, kill, pgrep), no iproute2.
# Processes are found in /proc and signalled with the shell's kill.
set -u
bin=${1:?usage: checks.sh BINDIR [DEB]}
deb=${2:-}
src=$(cd "$(dirname "$0")/../.." && pwd)
RESULTS=${RESULTS:-/root/results.log}
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /root || exit 1
: >"$RESULTS"

failed=0
report() { echo "$*"; echo "$*" >>"$RESULTS"; }
pass() { report "PASS $1"; }
fail() { report "FAIL $1: $2"; failed=$((failed + 1)); }
# check NAME FUNCTION: runs FUNCTION (in this shell: checks keep state),
# which prints why on failure.
check() {
    hash -r # install.sh and dpkg move rexec-agent between /usr/local/bin and /usr/bin
    if "$2" >/root/why 2>&1; then pass "$1"; else fail "$1" "$(tr '\n' ' ' </root/why | cut -c1-800)"; fi
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS.
wait_for() {
    local tries=$(($1 * 10))
    shift
    while [ "$tries" -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

# Live processes whose command line is exactly WORDS (joined by spaces).
pids_of() {
    local want=$1 p line
    for p in /proc/[0-9]*; do
        line=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        [ "${line% }" = "$want" ] || continue
        grep -q '^State:.*Z' "$p/status" 2>/dev/null && continue
        echo "${p#/proc/}"
    done
}
running() { [ -n "$(pids_of "$1")" ]; }
gone() { [ -z "$(pids_of "$1")" ]; }
prop() { systemctl show -p "$2" --value "$1"; }
# The journal's newest entry, and the agent's lines after such a mark.
journal_mark() { journalctl -n 1 --show-cursor -o cat -q | sed -n 's/^-- cursor: //p'; }
journal_after() { journalctl -u rexec-agent -o cat --no-pager --after-cursor "$1"; }
journal_says() { journal_after "$1" | grep -qF "$2"; }
# Whether one of the agent's last five lines holds TEXT.
recent_agent_line() { journalctl -u rexec-agent -o cat -n 5 | grep -qF "$1"; }

target=127.0.0.1:7722
audited=()
# ctl_as CLIENT COMMAND: ctl exec as CLIENT (its config dir /root/CLIENT).
ctl_as() { REXEC_CONFIG_DIR=/root/$1 "$bin/ctl" exec "$target" "$2" </dev/null; }
# The agent logs one audit line per command it ran; kept to compare with
# the journal at the end.
expect_audit() { audited+=("$1"); }

# Everything on the root file system before the install, to compare after
# the purge. What the system itself changes meanwhile (the journal, systemd's
# state, our clients in /root) is left out.
snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /var/tmp -o -path /var/log -o -path /var/lib/systemd -o -path /var/cache \
        -o -path /root -o -path /opt/rexec \) -prune -o -print | sort
}
snapshot >/root/before.list

check_image_has_no_procps() {
    # What the reload check depends on: a unit that needs /bin/kill fails here.
    [ ! -e /bin/kill ] && [ ! -e /usr/bin/kill ] || { echo "/bin/kill exists in the image"; return 1; }
}

check_install_enables_and_starts() {
    "$src/scripts/install.sh" --from "$bin" >/root/install.log 2>&1 || { cat /root/install.log; return 1; }
    grep -q '^install.sh: enabled and started rexec-agent.socket and rexec-agent.service$' /root/install.log ||
        { cat /root/install.log; return 1; }
    local state
    for unit in rexec-agent.service rexec-agent.socket; do
        state=$(systemctl is-enabled "$unit")
        [ "$state" = enabled ] || { echo "$unit is $state"; return 1; }
    done
    grep -q '^agent fingerprint: SHA256:' /root/install.log || { cat /root/install.log; return 1; }
}

check_service_and_socket_are_active() {
    local out
    out=$(systemctl is-active rexec-agent.service rexec-agent.socket | tr '\n' ' ')
    [ "$out" = "active active " ] || { echo "is-active says: $out"; return 1; }
}

check_status_names_address_and_sessions() {
    local status
    status=$(prop rexec-agent.service StatusText)
    [ "$status" = "listening on [::]:7722; 0 sessions running (limit 256)" ] ||
        { echo "StatusText=$status"; return 1; }
    systemctl status rexec-agent.service --no-pager >/root/status.txt 2>&1
    grep -q 'Status: "listening on \[::\]:7722; 0 sessions running (limit 256)"' /root/status.txt ||
        { cat /root/status.txt; return 1; }
}

# A client: its identity in /root/NAME, the agent in its known hosts,
# authorized under NAME.
new_client() {
    local fp
    fp=$(REXEC_CONFIG_DIR=/root/$1 "$bin/ctl" keygen) || return 1
    echo "$target $(rexec-agent --dir /etc/rexec id)" >"/root/$1/known_hosts"
    echo "$fp"
}

check_ctl_exec_runs_in_the_units_cgroup() {
    new_client alice >/root/alice.fp 2>/dev/null || return 1
    rexec-agent authorize "$(cat /root/alice.fp)" --name alice 2>/dev/null || return 1
    local out
    out=$(ctl_as alice 'echo hello-from-the-unit; cat /proc/self/cgroup') || { echo "ctl exec failed: $out"; return 1; }
    expect_audit 'echo hello-from-the-unit; cat /proc/self/cgroup'
    [ "$(echo "$out" | head -1)" = hello-from-the-unit ] || { echo "output: $out"; return 1; }
    echo "$out" | grep -q '^0::/system.slice/rexec-agent.service$' ||
        { echo "the command's cgroup is not the unit's: $out"; return 1; }
}

check_reload_rereads_clients_and_names_changed_settings() {
    local mark out
    new_client bob >/root/bob.fp 2>/dev/null || return 1
    mark=$(journal_mark)
    # Written behind the agent's back, as an admin's editor or config
    # management would, then reloaded.
    printf '%s bob\n' "$(cat /root/bob.fp)" >/etc/rexec/authorized_clients
    printf 'shutdown_grace = "3s"\n' >>/etc/rexec/agent.toml
    systemctl reload rexec-agent.service 2>&1 || { echo "systemctl reload failed"; return 1; }
    wait_for 10 sh -c "journalctl -u rexec-agent -o cat --after-cursor '$mark' | grep -q 'SIGHUP: authorized clients re-read clients=1'" ||
        { journal_after "$mark"; return 1; }
    journal_after "$mark" | grep -q 'SIGHUP: changed settings take effect on restart (systemctl restart rexec-agent): shutdown_grace$' ||
        { journal_after "$mark"; return 1; }
    out=$(ctl_as bob 'echo bob-is-served') || { echo "bob refused: $out"; return 1; }
    expect_audit 'echo bob-is-served'
    [ "$out" = bob-is-served ] || { echo "bob got: $out"; return 1; }
    out=$(ctl_as alice 'echo alice-is-served' 2>&1)
    local code=$?
    [ "$code" = 255 ] || { echo "revoked alice: exit $code, $out"; return 1; }
    # The agent logs the refusal as it closes the connection; journald may
    # take it in a moment after ctl has exited.
    wait_for 10 journal_says "$mark" "refusing client: fingerprint not authorized fingerprint=$(cat /root/alice.fp)" ||
        { journal_after "$mark"; return 1; }
    [ "$(prop rexec-agent.service ActiveState)" = active ] || { echo "not active after reload"; return 1; }
}

# A command that outlives a stop: the shell ignores nothing, so it dies by
# the agent's SIGTERM to its process group once shutdown_grace is over.
check_restart_gives_running_commands_the_grace_then_kills_them() {
    local old new ctl_pid code sigterm killed
    old=$(prop rexec-agent.service MainPID)
    ctl_as alice 'sleep 6001' >/dev/null 2>&1 &
    ctl_pid=$!
    wait_for 10 running 'sleep 6001' || { echo "the command never started"; return 1; }
    expect_audit 'sleep 6001'
    grep -q '^0::/system.slice/rexec-agent.service$' "/proc/$(pids_of 'sleep 6001' | head -1)/cgroup" ||
        { echo "the command is not in the unit's cgroup"; return 1; }
    # The status line counts it (updated within a second).
    wait_for 5 sh -c '[ "$(systemctl show -p StatusText --value rexec-agent.service)" = "listening on [::]:7722; 1 session running (limit 256)" ]' ||
        { echo "StatusText=$(prop rexec-agent.service StatusText)"; return 1; }
    # The running agent has the default shutdown_grace, 10 s (the reload
    # above only named the new value: it takes effect with this restart).
    systemctl restart rexec-agent.service || { echo "systemctl restart failed"; return 1; }
    wait "$ctl_pid"
    code=$?
    [ "$code" != 0 ] || { echo "ctl exited 0 for a killed command"; return 1; }
    gone 'sleep 6001' || { echo "the command is still running: $(pids_of 'sleep 6001')"; return 1; }
    new=$(prop rexec-agent.service MainPID)
    [ "$new" != "$old" ] && [ "$new" != 0 ] || { echo "MainPID $old then $new"; return 1; }
    [ "$(prop rexec-agent.service ActiveState)" = active ] || { echo "not active after restart"; return 1; }
    # The old agent said it would wait, then killed the command: the two
    # journal lines are the grace apart. journald stamps a line when it
    # receives it, and on a loaded machine the first can arrive a few
    # milliseconds after the agent's timer started, so 9.5 s counts as the
    # grace given; an agent that did not wait would show well under 1 s.
    # short-unix stamps are seconds with six decimals: microseconds once
    # the dot is dropped.
    sigterm=$(journalctl _PID="$old" -o short-unix | sed -n 's/^\([0-9]*\)\.\([0-9]*\) .*SIGTERM: no new connections.*/\1\2/p' | head -1)
    killed=$(journalctl _PID="$old" -o short-unix | sed -n 's/^\([0-9]*\)\.\([0-9]*\) .*grace period over; killing the commands still running.*/\1\2/p' | head -1)
    [ -n "$sigterm" ] && [ -n "$killed" ] || { journalctl _PID="$old" -o short-unix --no-pager | tail -20; return 1; }
    [ $((killed - sigterm)) -ge 9500000 ] || { echo "killed $((killed - sigterm)) us after SIGTERM, before the 10 s grace"; return 1; }
}

check_kill_9_of_the_agent_restarts_it_and_leaves_no_command() {
    local old new restarts ctl_pid
    old=$(prop rexec-agent.service MainPID)
    restarts=$(prop rexec-agent.service NRestarts)
    ctl_as alice 'sleep 6002' >/dev/null 2>&1 &
    ctl_pid=$!
    wait_for 10 running 'sleep 6002' || { echo "the command never started"; return 1; }
    kill -9 "$old"
    wait "$ctl_pid"
    [ $? != 0 ] || { echo "ctl exited 0 for a command whose agent died"; return 1; }
    wait_for 20 sh -c "[ \"\$(systemctl show -p NRestarts --value rexec-agent.service)\" = $((restarts + 1)) ]" ||
        { echo "NRestarts stays $(prop rexec-agent.service NRestarts)"; return 1; }
    wait_for 20 sh -c '[ "$(systemctl is-active rexec-agent.service)" = active ]' || { echo "not active again"; return 1; }
    new=$(prop rexec-agent.service MainPID)
    [ "$new" != "$old" ] || { echo "same MainPID $old"; return 1; }
    gone 'sleep 6002' || { echo "the command outlived its agent: $(pids_of 'sleep 6002')"; return 1; }
    local out
    out=$(ctl_as alice 'echo served-after-the-crash') || { echo "not served after the crash: $out"; return 1; }
    expect_audit 'echo served-after-the-crash'
}

check_stop_then_a_connection_starts_the_agent_again() {
    systemctl stop rexec-agent.service 2>/dev/null
    [ "$(systemctl is-active rexec-agent.service)" = inactive ] || { echo "service still $(systemctl is-active rexec-agent.service)"; return 1; }
    [ "$(systemctl is-active rexec-agent.socket)" = active ] || { echo "socket is $(systemctl is-active rexec-agent.socket)"; return 1; }
    local out
    out=$(ctl_as alice 'echo started-by-the-socket') || { echo "ctl exec failed: $out"; return 1; }
    expect_audit 'echo started-by-the-socket'
    [ "$out" = started-by-the-socket ] || { echo "output: $out"; return 1; }
    [ "$(systemctl is-active rexec-agent.service)" = active ] || { echo "service is $(systemctl is-active rexec-agent.service)"; return 1; }
}

# The README's opt-out of socket activation: the agent binds agent.toml's
# listen addresses itself; enabled again, the socket hands over the port.
check_disabling_the_socket_opts_out_of_socket_activation() {
    local out
    systemctl disable --now rexec-agent.socket 2>/dev/null || { echo "disable failed"; return 1; }
    systemctl restart rexec-agent.service || { echo "restart failed"; return 1; }
    [ "$(systemctl is-active rexec-agent.socket)" = inactive ] || { echo "socket is $(systemctl is-active rexec-agent.socket)"; return 1; }
    wait_for 10 recent_agent_line "listening on 0.0.0.0:7722 fingerprint=" ||
        { journalctl -u rexec-agent -o cat -n 20 --no-pager; return 1; }
    out=$(ctl_as alice 'echo served-without-the-socket') || { echo "ctl exec failed: $out"; return 1; }
    expect_audit 'echo served-without-the-socket'
    systemctl stop rexec-agent.service
    systemctl enable --now rexec-agent.socket 2>/dev/null || return 1
    systemctl start rexec-agent.service || return 1
    check_service_and_socket_are_active || return 1
    wait_for 10 recent_agent_line "listening on [::]:7722 (socket from systemd)" ||
        { journalctl -u rexec-agent -o cat -n 20 --no-pager; return 1; }
}

check_an_upgrade_keeps_the_socket_disabled_as_the_admin_left_it() {
    local out
    systemctl disable --now rexec-agent.socket 2>/dev/null || { echo "disable failed"; return 1; }
    systemctl restart rexec-agent.service || { echo "restart failed"; return 1; }
    "$src/scripts/install.sh" --from "$bin" >/root/upgrade.log 2>&1 || { cat /root/upgrade.log; return 1; }
    grep -q '^install.sh: upgraded: the units stay enabled or disabled as they were' /root/upgrade.log ||
        { cat /root/upgrade.log; return 1; }
    [ "$(systemctl is-enabled rexec-agent.socket)" = disabled ] ||
        { echo "socket is $(systemctl is-enabled rexec-agent.socket) after the upgrade"; return 1; }
    [ "$(systemctl is-active rexec-agent.service)" = active ] || { echo "service not active"; return 1; }
    out=$(ctl_as alice 'echo served-after-the-upgrade') || { echo "ctl exec failed: $out"; return 1; }
    expect_audit 'echo served-after-the-upgrade'
    # As before, for the checks that follow.
    systemctl stop rexec-agent.service
    systemctl enable --now rexec-agent.socket 2>/dev/null || return 1
    systemctl start rexec-agent.service || return 1
    check_service_and_socket_are_active
}

check_journal_has_one_audit_line_per_exec_without_own_timestamps() {
    local lines cmd n
    lines=$(journalctl -u rexec-agent -o cat | grep ' exec peer=')
    n=$(echo "$lines" | grep -c .)
    [ "$n" = "${#audited[@]}" ] || { echo "$n audit lines for ${#audited[@]} commands: $lines"; return 1; }
    for cmd in "${audited[@]}"; do
        n=$(echo "$lines" | grep -cF "command=\"$cmd\"")
        [ "$n" = 1 ] || { echo "$n audit lines for: $cmd"; return 1; }
    done
    # The journal stamps each line; the agent adds no time of its own.
    if journalctl -u rexec-agent -o cat | grep -E '^ *[0-9]{4}-[0-9]{2}-[0-9]{2}T'; then
        echo "lines carry the agent's own timestamp"
        return 1
    fi
}

# A detached job is in a scope of its own, not in the unit's cgroup:
# `systemctl restart` (an upgrade of rexec) leaves it running, and the new
# agent finds it running, then reports its end, output and status; a
# `ctl job output --follow` started before the restart asks again and ends
# with the job's output, each byte once, and its status. The job
# waits for a file made only after the restart, so it cannot have ended
# before the old agent was gone (the agent's shutdown_grace is 3 s here).
# audited_end PID ID TEXT: the agent PID logged the end of job ID, with TEXT.
audited_end() {
    journalctl _PID="$1" -o cat | grep 'job ended' | grep -F "job=\"$2\"" | grep -qF "$3"
}
check_a_detached_job_survives_systemctl_restart() {
    local id out code pid old new listed follower
    rm -f /root/job.pid /root/job.go
    id=$(REXEC_CONFIG_DIR=/root/alice "$bin/ctl" exec --detach "$target" \
        'echo $$ >/root/job.pid; echo job-start; for i in $(seq 1200); do [ -e /root/job.go ] && break; sleep 0.1; done; echo job-done >&2; exit 6' </dev/null) ||
        { echo "detach failed: $id"; return 1; }
    wait_for 10 test -s /root/job.pid || { echo "the job never started"; return 1; }
    pid=$(cat /root/job.pid)
    grep -q "^0::/system.slice/rexec-job-$id.scope$" "/proc/$pid/cgroup" ||
        { echo "the job is not in its own scope: $(cat "/proc/$pid/cgroup")"; return 1; }
    [ "$(prop "rexec-job-$id.scope" ActiveState)" = active ] ||
        { echo "rexec-job-$id.scope is $(prop "rexec-job-$id.scope" ActiveState)"; return 1; }
    # A follower started before the restart rides over it.
    REXEC_CONFIG_DIR=/root/alice "$bin/ctl" job output --follow "$target" "$id" \
        >/root/follow.out 2>/root/follow.err </dev/null &
    follower=$!
    wait_for 10 grep -q job-start /root/follow.out || { echo "the follower printed nothing"; return 1; }
    old=$(prop rexec-agent.service MainPID)
    systemctl restart rexec-agent.service || { echo "systemctl restart failed"; return 1; }
    new=$(prop rexec-agent.service MainPID)
    [ "$new" != "$old" ] && [ "$new" != 0 ] || { echo "MainPID $old then $new"; return 1; }
    grep -q '^State:.*[RS]' "/proc/$pid/status" 2>/dev/null ||
        { echo "the job's shell $pid did not outlive the restart"; return 1; }
    listed=$(REXEC_CONFIG_DIR=/root/alice "$bin/ctl" job list --json "$target" </dev/null)
    echo "$listed" | grep -q "\"id\":\"$id\".*\"status\":\"running\"" ||
        echo "$listed" | grep -q "\"status\":\"running\".*\"id\":\"$id\"" ||
        { echo "the new agent lists: $listed"; return 1; }
    touch /root/job.go
    REXEC_CONFIG_DIR=/root/alice "$bin/ctl" job wait "$target" "$id" </dev/null
    code=$?
    [ "$code" = 6 ] || { echo "job wait after the restart: exit $code"; return 1; }
    wait "$follower"
    code=$?
    [ "$code" = 6 ] && [ "$(cat /root/follow.out)" = job-start ] &&
        [ "$(grep -v '^ctl: ' /root/follow.err)" = job-done ] &&
        grep -q '^ctl: .*: the agent is stopping; the job goes on there, asking again for up to 10m$' /root/follow.err ||
        { echo "the follower across the restart: exit $code, stdout $(cat /root/follow.out), stderr $(cat /root/follow.err)"; return 1; }
    out=$(REXEC_CONFIG_DIR=/root/alice "$bin/ctl" job output "$target" "$id" 2>/root/job.err </dev/null)
    [ "$out" = job-start ] && [ "$(cat /root/job.err)" = job-done ] ||
        { echo "job output after the restart: stdout $out, stderr $(cat /root/job.err)"; return 1; }
    [ -d "/var/lib/rexec/jobs/$id" ] || { echo "no /var/lib/rexec/jobs/$id"; return 1; }
    # The new agent wrote the end to the audit log.
    wait_for 10 audited_end "$new" "$id" 'outcome="exit 6"' ||
        { echo "no audit line of the end from the new agent:"; journalctl _PID="$new" -o cat --no-pager | tail -5; return 1; }
}

check_uninstall_keeps_only_the_identity() {
    "$src/scripts/install.sh" uninstall >/root/uninstall.log 2>&1 || { cat /root/uninstall.log; return 1; }
    local state
    state=$(systemctl is-active rexec-agent.service rexec-agent.socket | tr '\n' ' ')
    [ "$state" = "inactive inactive " ] || { echo "after uninstall: $state"; return 1; }
    [ -z "$(systemctl list-unit-files --no-legend 'rexec-agent*')" ] || { systemctl list-unit-files 'rexec-agent*'; return 1; }
    [ ! -e /usr/local/bin/rexec-agent ] && [ ! -e /usr/local/bin/ctl ] || { echo "binaries left"; return 1; }
    [ -e /etc/rexec/agent.key ] && [ -e /etc/rexec/authorized_clients ] || { echo "the identity is gone"; return 1; }
    # Nothing listens on 7722 (hex 1E2A) any more, IPv4 or IPv6.
    if grep -h ':1E2A [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6; then echo "port 7722 still listening"; return 1; fi
    local p
    p=$(cat /sys/fs/cgroup/unified/system.slice/rexec-agent.service/cgroup.procs /sys/fs/cgroup/system.slice/rexec-agent.service/cgroup.procs 2>/dev/null)
    [ -z "$p" ] || { echo "processes left in the unit's cgroup: $p"; return 1; }
}

check_purge_leaves_nothing_behind() {
    "$src/scripts/install.sh" uninstall --purge >/root/purge.log 2>&1 || { cat /root/purge.log; return 1; }
    snapshot >/root/after.list
    diff /root/before.list /root/after.list || return 1
}

check_dpkg_install_enables_and_starts() {
    dpkg -i "$deb" >/root/dpkg.log 2>&1 || { cat /root/dpkg.log; return 1; }
    grep -q '^rexec-agent: agent fingerprint SHA256:' /root/dpkg.log || { cat /root/dpkg.log; return 1; }
    local state
    for unit in rexec-agent.service rexec-agent.socket; do
        state=$(systemctl is-enabled "$unit")
        [ "$state" = enabled ] || { echo "$unit is $state"; return 1; }
    done
    check_service_and_socket_are_active || return 1
    check_status_names_address_and_sessions || return 1
    [ "$(prop rexec-agent.service ExecMainPID)" != 0 ] || return 1
    grep -q '^ExecStart=/usr/bin/rexec-agent ' "$(prop rexec-agent.service FragmentPath)" ||
        { echo "unit: $(prop rexec-agent.service FragmentPath)"; return 1; }
}

check_package_serves_and_reloads() {
    echo "$target $(rexec-agent --dir /etc/rexec id)" >/root/alice/known_hosts
    rexec-agent authorize "$(cat /root/alice.fp)" --name alice 2>/dev/null || return 1
    systemctl reload rexec-agent.service || { echo "systemctl reload failed"; return 1; }
    local out
    out=$(ctl_as alice 'echo served-by-the-package; cat /proc/self/cgroup') || { echo "ctl exec failed: $out"; return 1; }
    [ "$(echo "$out" | head -1)" = served-by-the-package ] || { echo "output: $out"; return 1; }
    echo "$out" | grep -q '^0::/system.slice/rexec-agent.service$' || { echo "cgroup: $out"; return 1; }
}

check_dpkg_upgrade_keeps_the_identity() {
    local fp old new
    fp=$(rexec-agent --dir /etc/rexec id)
    old=$(prop rexec-agent.service MainPID)
    dpkg -i "$deb" >/root/dpkg-again.log 2>&1 || { cat /root/dpkg-again.log; return 1; }
    [ "$(rexec-agent --dir /etc/rexec id)" = "$fp" ] || { echo "the fingerprint changed"; return 1; }
    grep -qF "rexec-agent: agent fingerprint $fp" /root/dpkg-again.log || { cat /root/dpkg-again.log; return 1; }
    new=$(prop rexec-agent.service MainPID)
    [ "$new" != "$old" ] && [ "$new" != 0 ] || { echo "MainPID $old then $new"; return 1; }
    check_service_and_socket_are_active || return 1
    local out
    out=$(ctl_as alice 'echo served-after-the-upgrade') || { echo "ctl exec failed: $out"; return 1; }
}

check_dpkg_purge_leaves_nothing_behind() {
    dpkg --purge rexec-agent >/root/dpkg-purge.log 2>&1 || { cat /root/dpkg-purge.log; return 1; }
    local state
    state=$(systemctl is-active rexec-agent.service rexec-agent.socket | tr '\n' ' ')
    [ "$state" = "inactive inactive " ] || { echo "after purge: $state"; return 1; }
    [ -z "$(systemctl list-unit-files --no-legend 'rexec-agent*')" ] || { systemctl list-unit-files 'rexec-agent*'; return 1; }
    local left
    left=$(find /var/lib/systemd /var/lib/dpkg/info -name '*rexec*' 2>/dev/null)
    [ -z "$left" ] || { echo "left: $left"; return 1; }
    # dpkg keeps its database's backup copies; nothing else may differ.
    snapshot | grep -v '^/var/lib/dpkg/[a-z-]*-old$' >/root/after-deb.list
    grep -v '^/var/lib/dpkg/[a-z-]*-old$' /root/before.list | diff - /root/after-deb.list || return 1
}

check "the image has no /bin/kill (procps)" check_image_has_no_procps
check "install.sh installs, enables and starts" check_install_enables_and_starts
if [ "$failed" = 0 ]; then
    check "systemctl is-active: service and socket" check_service_and_socket_are_active
    check "StatusText names the address and the sessions" check_status_names_address_and_sessions
    check "ctl exec runs the command in the unit's cgroup" check_ctl_exec_runs_in_the_units_cgroup
    check "systemctl reload re-reads authorized_clients and names changed settings" check_reload_rereads_clients_and_names_changed_settings
    # Alice again, whatever the reload check left, for the checks below.
    rexec-agent authorize "$(cat /root/alice.fp)" --name alice 2>/dev/null
    check "systemctl restart gives a running command shutdown_grace, then kills it" check_restart_gives_running_commands_the_grace_then_kills_them
    check "kill -9 of the agent: restarted, no command left" check_kill_9_of_the_agent_restarts_it_and_leaves_no_command
    check "systemctl stop, then a connection starts the agent again" check_stop_then_a_connection_starts_the_agent_again
    check "socket disabled: the agent listens itself; enabled, the socket is back" check_disabling_the_socket_opts_out_of_socket_activation
    check "install.sh again (an upgrade) keeps the socket disabled as the admin left it" check_an_upgrade_keeps_the_socket_disabled_as_the_admin_left_it
    check "journal: one audit line per exec, systemd's timestamps only" check_journal_has_one_audit_line_per_exec_without_own_timestamps
    check "a detached job survives systemctl restart in a scope of its own" check_a_detached_job_survives_systemctl_restart
fi
check "install.sh uninstall removes all but /etc/rexec" check_uninstall_keeps_only_the_identity
check "install.sh uninstall --purge leaves nothing behind" check_purge_leaves_nothing_behind
if [ -n "$deb" ]; then
    check "dpkg -i: the package creates the identity, enables and starts the units" check_dpkg_install_enables_and_starts
    check "the package's agent serves ctl exec and reloads" check_package_serves_and_reloads
    check "dpkg -i again: identity kept, agent restarted" check_dpkg_upgrade_keeps_the_identity
    check "dpkg --purge leaves nothing behind" check_dpkg_purge_leaves_nothing_behind
fi

if [ "$failed" = 0 ]; then report "RESULT ok"; else report "RESULT failed $failed"; fi
# The journal of the agent, for the host to print on failure.
journalctl -u rexec-agent -u rexec-agent.socket -o short-precise --no-pager >/root/agent-journal.log 2>&1
exit 0
