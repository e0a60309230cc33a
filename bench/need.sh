# Sourced by the bench scripts after they put the Debian packages they
# lack in $need: installs them when we are root, else says what is
# missing and stops.
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
    else
        echo "missing:$need (install them, or run as root)" >&2
        exit 1
    fi
fi
