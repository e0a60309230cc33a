#!/bin/sh
# Install (or uninstall) the rexec agent as a systemd service.
#
#   cargo build --release && sudo scripts/install.sh   install, enable, start
#   sudo scripts/install.sh uninstall        stop, disable, remove binaries and units
#   sudo scripts/install.sh uninstall --purge   ... and /etc/rexec
#   DESTDIR=/tmp/stage scripts/install.sh    stage the tree only; no root, no systemctl
#
# Options:
#   --prefix DIR   where the binaries go: DIR/bin (default /usr/local)
#   --from DIR     take rexec-agent and ctl from DIR (default target/release,
#                  built with `cargo build --release` when missing)
#   --purge        with uninstall: also remove the identity and config
#
# Installed:
#   PREFIX/bin/rexec-agent, PREFIX/bin/ctl
#   PREFIX/share/man/man1/ctl*.1, rexec-agent*.1 (man pages)
#   PREFIX/share/bash-completion/completions/ctl, PREFIX/share/zsh/site-functions/_ctl,
#   PREFIX/share/fish/vendor_completions.d/ctl.fish (ctl's shell completions)
#   /etc/systemd/system/rexec-agent.service, rexec-agent.socket
#   /etc/rexec/agent.toml (never overwritten), agent.crt, agent.key (0600),
#   authorized_clients (created by `rexec-agent init` when there is no identity)
# Configuration lives in /etc whatever the prefix, as the units expect.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
action=install
prefix=/usr/local
from=
purge=no
while [ $# -gt 0 ]; do
    case $1 in
        install | uninstall) action=$1 ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --prefix=*) prefix=${1#--prefix=} ;;
        --from) from=${2:?--from needs a directory}; shift ;;
        --from=*) from=${1#--from=} ;;
        --purge) purge=yes ;;
        -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $prefix in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path: $prefix" >&2; exit 2 ;;
esac

destdir=${DESTDIR:-}
bindir=$destdir$prefix/bin
mandir=$destdir$prefix/share/man/man1
bashdir=$destdir$prefix/share/bash-completion/completions
zshdir=$destdir$prefix/share/zsh/site-functions
fishdir=$destdir$prefix/share/fish/vendor_completions.d
unitdir=$destdir/etc/systemd/system
confdir=$destdir/etc/rexec
statedir=$destdir/var/lib/rexec

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or set DESTDIR to stage the files elsewhere" >&2
    exit 1
fi

# systemctl runs only on a real install on a machine booted with systemd.
use_systemctl=yes
if [ -n "$destdir" ]; then
    use_systemctl=no
    why="DESTDIR is set"
elif ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
    use_systemctl=no
    why="this machine is not running systemd"
fi

step() { echo "install.sh: $*"; }

if [ "$action" = uninstall ]; then
    if [ "$use_systemctl" = yes ]; then
        systemctl disable --now rexec-agent.socket rexec-agent.service 2>/dev/null || true
    else
        step "$why: not stopping or disabling units"
    fi
    rm -f "$unitdir/rexec-agent.service" "$unitdir/rexec-agent.socket" \
        "$bindir/rexec-agent" "$bindir/ctl" \
        "$mandir"/ctl.1 "$mandir"/ctl-*.1 "$mandir"/rexec-agent.1 "$mandir"/rexec-agent-*.1 \
        "$bashdir/ctl" "$zshdir/_ctl" "$fishdir/ctl.fish"
    # The directories install made for them, when nothing else is there.
    for dir in "$mandir" "$bashdir" "${bashdir%/completions}" "$zshdir" "${zshdir%/site-functions}" \
        "$fishdir" "${fishdir%/vendor_completions.d}"; do
        rmdir --ignore-fail-on-non-empty "$dir" 2>/dev/null || true
    done
    step "removed $bindir/rexec-agent, $bindir/ctl, their man pages and completions, and the units in $unitdir"
    if [ "$use_systemctl" = yes ]; then systemctl daemon-reload; fi
    if [ "$purge" = yes ]; then
        rm -rf "$confdir" "$statedir"
        step "removed $confdir (identity, authorized clients, config) and $statedir (detached jobs)"
    else
        step "kept $confdir (identity, authorized clients, config); --purge removes it"
    fi
    exit 0
fi

if [ -z "$from" ]; then
    from=$repo/target/release
    if [ ! -x "$from/rexec-agent" ] || [ ! -x "$from/ctl" ]; then
        if ! command -v cargo >/dev/null 2>&1; then
            echo "install.sh: no binaries in $from and no cargo here (sudo resets PATH):" >&2
            echo "    build first as yourself: cargo build --release" >&2
            exit 1
        fi
        step "building release binaries"
        (cd "$repo" && cargo build --release --locked -p rexec-agent -p rexec-ctl)
    fi
fi
for bin in rexec-agent ctl; do
    [ -x "$from/$bin" ] || { echo "install.sh: $from/$bin is missing" >&2; exit 1; }
done

install -d -m 0755 "$bindir" "$unitdir"
install -m 0755 "$from/rexec-agent" "$from/ctl" "$bindir/"
step "installed rexec-agent and ctl in $bindir"

# Man pages and completions come from the binaries' own command-line
# definitions, so they match the version installed.
pages=$(mktemp -d)
trap 'rm -rf "$pages"' EXIT
"$from/ctl" man-pages "$pages"
"$from/rexec-agent" man-pages "$pages"
install -d -m 0755 "$mandir" "$bashdir" "$zshdir" "$fishdir"
install -m 0644 "$pages"/*.1 "$mandir/"
"$from/ctl" completions bash >"$pages/ctl.bash"
"$from/ctl" completions zsh >"$pages/_ctl"
"$from/ctl" completions fish >"$pages/ctl.fish"
install -m 0644 "$pages/ctl.bash" "$bashdir/ctl"
install -m 0644 "$pages/_ctl" "$zshdir/_ctl"
install -m 0644 "$pages/ctl.fish" "$fishdir/ctl.fish"
step "installed the man pages in $mandir and ctl's completions for bash, zsh and fish"

# The units name /usr/bin/rexec-agent, where the Debian package puts it;
# point them at the prefix.
# Units there already: an upgrade, which leaves them enabled or disabled
# as the admin has them (`systemctl disable --now rexec-agent.socket` to
# listen on agent.toml's addresses stays so).
if [ -e "$unitdir/rexec-agent.service" ]; then upgrade=yes; else upgrade=no; fi
for unit in rexec-agent.service rexec-agent.socket; do
    sed "s|/usr/bin/rexec-agent|$prefix/bin/rexec-agent|g" "$repo/systemd/$unit" >"$unitdir/$unit.tmp"
    chmod 0644 "$unitdir/$unit.tmp"
    mv "$unitdir/$unit.tmp" "$unitdir/$unit"
done
step "installed rexec-agent.service and rexec-agent.socket in $unitdir"

install -d -m 0755 "$confdir"
if [ -e "$confdir/agent.toml" ]; then
    step "kept the existing $confdir/agent.toml"
else
    install -m 0644 "$repo/systemd/agent.toml" "$confdir/agent.toml"
    step "installed the example config $confdir/agent.toml"
fi

if [ -e "$confdir/agent.key" ]; then
    fingerprint=$("$bindir/rexec-agent" --dir "$confdir" id)
    step "kept the existing agent identity in $confdir"
else
    fingerprint=$("$bindir/rexec-agent" --dir "$confdir" init)
    step "created the agent identity in $confdir"
fi

if [ "$use_systemctl" = yes ] && [ "$upgrade" = yes ]; then
    systemctl daemon-reload
    # The running agent picks up the new binary.
    systemctl try-restart rexec-agent.service
    step "upgraded: the units stay enabled or disabled as they were; a running agent was restarted"
elif [ "$use_systemctl" = yes ]; then
    systemctl daemon-reload
    systemctl enable --now rexec-agent.socket rexec-agent.service
    step "enabled and started rexec-agent.socket and rexec-agent.service"
else
    step "$why: not running systemctl; to start the agent on the target machine:"
    echo "    systemctl daemon-reload"
    echo "    systemctl enable --now rexec-agent.socket rexec-agent.service"
fi

echo
echo "agent fingerprint: $fingerprint"
echo "authorize a client (its fingerprint from \`ctl id\`):"
echo "    rexec-agent authorize SHA256:... --name NAME"
