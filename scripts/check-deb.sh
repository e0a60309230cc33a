#!/bin/sh
# Build the two Debian packages from binaries already built, check them, and
# install, remove and purge them on this machine (run as root; CI does).
#
#   scripts/check-deb.sh [--profile dev|release] [--install]
#
# Without --install only the packages are built and checked (contents and
# lintian); with it, each is also installed with dpkg -i, checked, removed
# and purged. On a machine where systemd is not PID 1 (a container, CI) the
# agent's maintainer scripts still create the identity; they enable the
# units but start nothing, and say so in dpkg's output.
# Packages land in target/debian/: rexec-agent-ci.deb and rexec-ctl-ci.deb.
set -eu
cd "$(dirname "$0")/.."
profile=release
install=no
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs dev or release}; shift ;;
        --install) install=yes ;;
        *) echo "check-deb.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case $profile in dev) bindir=target/debug ;; *) bindir=target/$profile ;; esac
for bin in rexec-agent ctl; do
    [ -x "$bindir/$bin" ] || { echo "check-deb.sh: $bindir/$bin is missing: build first" >&2; exit 1; }
done

fail() { echo "check-deb.sh: FAIL: $*" >&2; exit 1; }
pass() { echo "check-deb.sh: PASS: $*"; }

# The generated assets, from the binaries' own clap definitions.
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bindir/ctl" man-pages target/assets/man
"$bindir/rexec-agent" man-pages target/assets/man
"$bindir/ctl" completions bash >target/assets/completions/ctl.bash
"$bindir/ctl" completions zsh >target/assets/completions/_ctl
"$bindir/ctl" completions fish >target/assets/completions/ctl.fish

agent=target/debian/rexec-agent-ci.deb
ctl=target/debian/rexec-ctl-ci.deb
strip=
[ "$profile" = dev ] && strip=--no-strip
cargo deb -p rexec-agent --profile "$profile" --no-build $strip -o "$agent"
cargo deb -p rexec-ctl --profile "$profile" --no-build $strip -o "$ctl"

# Contents: every file a user or the units rely on, in its place.
contents() { dpkg-deb --contents "$1" | awk '{print $6}' | sed 's|^\./|/|'; }
has() {
    contents "$1" | grep -qx "$2" || fail "$(basename "$1") lacks $2"
}
for path in /usr/bin/rexec-agent /etc/rexec/agent.toml \
    /usr/lib/systemd/system/rexec-agent.service /usr/lib/systemd/system/rexec-agent.socket \
    /usr/share/man/man1/rexec-agent.1.gz /usr/share/man/man1/rexec-agent-run.1.gz \
    /usr/share/doc/rexec-agent/copyright; do
    has "$agent" "$path"
done
for path in /usr/bin/ctl /usr/share/man/man1/ctl.1.gz /usr/share/man/man1/ctl-exec.1.gz \
    /usr/share/bash-completion/completions/ctl /usr/share/zsh/vendor-completions/_ctl \
    /usr/share/fish/vendor_completions.d/ctl.fish /usr/share/doc/rexec-ctl/copyright; do
    has "$ctl" "$path"
done
contents "$agent" | grep -q '^/usr/bin/ctl$' && fail "the agent's package holds ctl"
pass "dpkg-deb --contents: both packages hold their files"

# lintian: no errors. Warnings are shown; the tags below are expected of
# this project and said why. A debug build is not stripped (CI packs the
# binaries it tests); the example.invalid maintainer is a placeholder.
if command -v lintian >/dev/null 2>&1; then
    for deb in "$agent" "$ctl"; do
        out=$(lintian --tag-display-limit 0 \
            --suppress-tags unstripped-binary-or-object,no-manual-page,initial-upload-closes-no-bugs \
            "$deb" 2>&1 || true)
        [ -n "$out" ] && echo "$out"
        if echo "$out" | grep -q '^E: '; then
            fail "lintian reports errors for $(basename "$deb")"
        fi
    done
    pass "lintian: no errors"
else
    fail "lintian is not installed (apt-get install lintian)"
fi

[ "$install" = yes ] || exit 0
[ "$(id -u)" = 0 ] || fail "--install needs root"
if [ -d /run/systemd/system ]; then
    echo "check-deb.sh: systemd runs here: the units will be started"
else
    echo "check-deb.sh: systemd is not PID 1 here: the units are enabled but not started"
fi
# A machine that already has the agent (a developer's) is left alone.
if dpkg-query -W -f '${Status}' rexec-agent 2>/dev/null | grep -q installed ||
    [ -e /etc/rexec/agent.key ]; then
    fail "rexec-agent or /etc/rexec is already on this machine; not touching it"
fi

out=$(dpkg -i "$agent" 2>&1) || { echo "$out"; fail "dpkg -i $agent"; }
echo "$out"
echo "$out" | grep -q 'rexec-agent: agent fingerprint SHA256:' || fail "postinst printed no fingerprint"
[ -s /etc/rexec/agent.key ] || fail "postinst made no identity"
if [ ! -d /run/systemd/system ]; then
    echo "$out" | grep -q 'systemd is not running here' || fail "postinst did not say that systemd is not running"
fi
[ "$(stat -c %a /etc/rexec/agent.key)" = 600 ] || fail "agent.key is not 0600"
fingerprint=$(rexec-agent --dir /etc/rexec id)
echo "$out" | grep -q "$fingerprint" || fail "the fingerprint printed is not the identity's"
[ -L /etc/systemd/system/sockets.target.wants/rexec-agent.socket ] ||
    [ -L /etc/systemd/system/multi-user.target.wants/rexec-agent.service ] ||
    fail "the units were not enabled"
pass "dpkg -i rexec-agent: identity $fingerprint created, units enabled"

# Again, as an upgrade: the identity stays.
dpkg -i "$agent" >/dev/null 2>&1 || fail "reinstalling $agent"
[ "$(rexec-agent --dir /etc/rexec id)" = "$fingerprint" ] || fail "an upgrade changed the identity"
pass "reinstall keeps the identity"

dpkg -i "$ctl" >/dev/null 2>&1 || fail "dpkg -i $ctl"
ctl --version >/dev/null || fail "ctl does not run"
[ -f /usr/share/bash-completion/completions/ctl ] || fail "no bash completion"
bash -n /usr/share/bash-completion/completions/ctl || fail "bash rejects the completion"
man -w ctl-exec >/dev/null 2>&1 || [ ! -x /usr/bin/man ] || fail "man cannot find ctl-exec"
pass "dpkg -i rexec-ctl: ctl, its man pages and completions"

dpkg -r rexec-ctl >/dev/null 2>&1 || fail "dpkg -r rexec-ctl"
[ ! -e /usr/bin/ctl ] || fail "ctl left behind"
dpkg -P rexec-ctl >/dev/null 2>&1 || fail "dpkg -P rexec-ctl"

dpkg -r rexec-agent >/dev/null 2>&1 || fail "dpkg -r rexec-agent"
[ ! -e /usr/bin/rexec-agent ] || fail "rexec-agent left behind"
[ -e /etc/rexec/agent.key ] || fail "remove (not purge) dropped the identity"
dpkg -P rexec-agent >/dev/null 2>&1 || fail "dpkg -P rexec-agent"
[ ! -e /etc/rexec ] || fail "purge left /etc/rexec: $(ls -A /etc/rexec)"
for unit in sockets.target.wants/rexec-agent.socket multi-user.target.wants/rexec-agent.service; do
    [ ! -e "/etc/systemd/system/$unit" ] || fail "purge left $unit"
done
dpkg-query -W rexec-agent rexec-ctl >/dev/null 2>&1 && fail "dpkg still knows the packages"
pass "remove and purge leave nothing behind"
