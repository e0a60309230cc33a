#!/bin/sh
# The agent under a real systemd: boots a minimal Debian in systemd-nspawn,
# installs the agent there with scripts/install.sh and runs
# tests/nspawn/checks.sh inside as a oneshot unit, which powers the
# container off. Prints one PASS or FAIL line per check; on a failure or a
# hung boot, the container's console and the agent's journal too.
#
#   sudo tests/nspawn/run.sh [--deb FILE] [BINDIR]
#
# BINDIR holds rexec-agent and ctl (default target/debug, what `cargo test`
# builds; target/release works as well). With --deb, the Debian package
# (`cargo deb -p rexec-agent`) is then installed with dpkg -i, upgraded and
# purged, its maintainer scripts run by a real systemd. Needs root,
# systemd-nspawn (Debian: systemd-container) and debootstrap.
#
# The root file system (debootstrap --variant=minbase, with systemd and
# dbus) is built once per machine from the mirror apt already uses and kept
# in /var/cache/rexec-nspawn, keyed by suite and package list; each run boots
# a copy of it and deletes the copy. Settings:
#   REXEC_NSPAWN_CACHE    cache directory (default /var/cache/rexec-nspawn)
#   REXEC_NSPAWN_SUITE    Debian suite (default bookworm)
#   REXEC_NSPAWN_TIMEOUT  seconds for boot, checks and poweroff (default 300)
# Exit status: 0 when every check passed, 1 when one failed or the run did
# not finish, 2 when this machine cannot run it (and why).
set -eu
started=$(date +%s)

repo=$(cd "$(dirname "$0")/../.." && pwd)
deb=
if [ "${1:-}" = --deb ]; then
    deb=${2:?--deb needs a file}
    shift 2
fi
bindir=${1:-$repo/target/debug}
cache=${REXEC_NSPAWN_CACHE:-/var/cache/rexec-nspawn}
suite=${REXEC_NSPAWN_SUITE:-bookworm}
limit=${REXEC_NSPAWN_TIMEOUT:-300}
packages=systemd,systemd-sysv,dbus

say() { echo "nspawn: $*"; }
cannot() { echo "nspawn: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "needs root (systemd-nspawn and debootstrap do)"
command -v systemd-nspawn >/dev/null || cannot "systemd-nspawn is not installed (Debian: apt-get install systemd-container)"
command -v debootstrap >/dev/null || cannot "debootstrap is not installed (Debian: apt-get install debootstrap)"
for b in rexec-agent ctl; do
    [ -x "$bindir/$b" ] || cannot "$bindir/$b is missing: build first (cargo build)"
done
bindir=$(cd "$bindir" && pwd)
if [ -n "$deb" ]; then
    [ -f "$deb" ] || cannot "$deb is missing: build it first (cargo deb -p rexec-agent)"
fi

# The root, built once: into a temporary name, renamed when complete, so
# an interrupted build is never taken for a cached one. The lock keeps two
# runs from building at once.
key=$(printf '%s %s minbase\n' "$suite" "$packages" | sha256sum | cut -c1-16)
base=$cache/$suite-$key
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [ ! -d "$base/root" ]; then
    # The mirror apt already uses for this suite (no other is reachable on
    # a locked-down machine); Debian's own otherwise.
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$suite" '$2 == s { print $1; exit }')
    mirror=${mirror:-http://deb.debian.org/debian/}
    say "building the $suite root in $base from $mirror (once per machine)"
    rm -rf "$base.tmp"
    mkdir -p "$base.tmp"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$base.tmp/root" "$mirror" \
        >"$base.tmp/debootstrap.log" 2>&1; then
        tail -n 30 "$base.tmp/debootstrap.log" >&2
        rm -rf "$base.tmp"
        echo "nspawn: debootstrap failed" >&2
        exit 1
    fi
    rm -rf "$base.tmp/root/var/cache/apt/archives"/*.deb
    mv "$base.tmp" "$base"
fi
flock -u 9

work=$(mktemp -d /var/tmp/rexec-nspawn.XXXXXX)
root=$work/root
# With --keep-unit and no systemd on the machine, nspawn puts the
# container in "payload" and itself in "supervisor" under the cgroup it
# was started in. Two runs at once from the same cgroup (two checkouts
# tested on one machine) would share those: each container's systemd
# would see, and stop, the other's units. So each run starts nspawn in a
# cgroup of its own, in every hierarchy that has our processes (the
# unified one, and systemd's named one on a hybrid machine).
cgroups=
own_cgroup() {
    local mnt path dir
    while read -r mnt; do
        if [ -f "$mnt/cgroup.procs" ] && [ "$(stat -f -c %T "$mnt")" = cgroup2fs ]; then
            path=$(sed -n 's/^0:://p' /proc/self/cgroup)
        else
            path=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
        fi
        [ -n "$path" ] || continue
        dir=$mnt${path%/}/rexec-nspawn-$$
        mkdir "$dir" 2>/dev/null && cgroups="$cgroups $dir"
    done <<EOF_MOUNTS
$(awk '$3 == "cgroup2" || ($3 == "cgroup" && $4 ~ /(^|,)name=systemd(,|$)/) { print $2 }' /proc/self/mounts)
EOF_MOUNTS
}
cleanup() {
    # A container whose nspawn was killed can leave processes behind: ours
    # are those whose root directory is this copy.
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    for dir in $cgroups; do
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

cp -a "$base/root" "$root"
# The binaries and the repository's tracked files (scripts, units, checks).
install -d "$root/opt/rexec/bin" "$root/opt/rexec/src"
install -m 0755 "$bindir/rexec-agent" "$bindir/ctl" "$root/opt/rexec/bin/"
deb_in=
if [ -n "$deb" ]; then
    install -d "$root/opt/rexec/deb"
    install -m 0644 "$deb" "$root/opt/rexec/deb/"
    deb_in=/opt/rexec/deb/$(basename "$deb")
fi
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 tar -cf - --no-recursion 2>/dev/null) | tar -xf - -C "$root/opt/rexec/src"
else
    tar -C "$repo" --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$root/opt/rexec/src"
fi

units=$root/etc/systemd/system
cat >"$units/rexec-checks.service" <<EOF
[Unit]
Description=rexec checks under systemd
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/opt/rexec/src/tests/nspawn/checks.sh /opt/rexec/bin $deb_in
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=240
EOF
mkdir -p "$units/multi-user.target.wants"
ln -s ../rexec-checks.service "$units/multi-user.target.wants/rexec-checks.service"
# No login prompt on the console: nobody logs in.
ln -s /dev/null "$units/console-getty.service"
echo rexec-nspawn >"$root/etc/hostname"

say "booting $suite with systemd (at most $limit s)"
# --private-network: the checks use loopback only, and the container's
# port 7722 must not meet the machine's. --register=no and --keep-unit:
# no machined or systemd on the host is needed.
set +e
own_cgroup
# The shell that becomes nspawn moves itself into those cgroups first.
timeout -k 10 "$limit" sh -c 'for dir in $0; do echo $$ >"$dir/cgroup.procs" || exit 2; done; exec "$@"' "$cgroups" \
    systemd-nspawn --quiet -D "$root" --boot --register=no --keep-unit \
    --private-network --console=read-only </dev/null >"$work/console.log" 2>&1
rc=$?
set -e
elapsed=$(($(date +%s) - started))

results=$root/root/results.log
[ -f "$results" ] && cat "$results"
passed=$(grep -c '^PASS ' "$results" 2>/dev/null) || true
failed=$(grep -c '^FAIL ' "$results" 2>/dev/null) || true
if grep -qx 'RESULT ok' "$results" 2>/dev/null; then
    say "every check passed in $elapsed s"
    say "${passed:-0} passed, 0 failed"
    exit 0
fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "FAIL: boot, checks and poweroff did not finish within $limit s"
    failed=$((${failed:-0} + 1))
elif ! grep -q '^RESULT ' "$results" 2>/dev/null; then
    say "FAIL: the checks did not finish (systemd-nspawn exit $rc)"
    failed=$((${failed:-0} + 1))
fi
echo "==== container console"
sed 's/\x1b\[[0-9;]*m//g' "$work/console.log"
if [ -f "$root/root/agent-journal.log" ]; then
    echo "==== journal of rexec-agent"
    cat "$root/root/agent-journal.log"
fi
say "failed after $elapsed s"
say "${passed:-0} passed, ${failed:-0} failed"
exit 1
