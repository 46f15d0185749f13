# Shared by liftoff-plane's .deb and .rpm maintainer scripts (sourced, POSIX sh).

PLANE_DATA=/var/lib/liftoff-plane

plane_create_user() {
    getent group liftoff-plane >/dev/null || groupadd --system liftoff-plane
    getent passwd liftoff-plane >/dev/null || useradd --system --gid liftoff-plane \
        --home-dir "$PLANE_DATA" --no-create-home --shell /usr/sbin/nologin \
        --comment "liftoff-plane control plane" liftoff-plane
}

# The data directory: the plane's CA key, admin token and database; only its
# user may enter it.
plane_create_dirs() {
    install -d -m 0700 -o liftoff-plane -g liftoff-plane "$PLANE_DATA"
}

plane_systemd_running() {
    [ -d /run/systemd/system ]
}

# Enable always; (re)start only once `init` made plane.json (the unit's
# ExecCondition skips it before that anyway).
plane_enable_and_maybe_start() {
    if plane_systemd_running; then
        systemctl daemon-reload || true
        systemctl enable liftoff-plane.service || true
        if [ -f "$PLANE_DATA/plane.json" ]; then
            systemctl restart liftoff-plane.service || true
        else
            echo "liftoff-plane: enabled; make its data directory, then start it:" >&2
            echo "  runuser -u liftoff-plane -- liftoff-plane init --data $PLANE_DATA --name \$(hostname -f)" >&2
            echo "  systemctl start liftoff-plane" >&2
        fi
    else
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /lib/systemd/system/liftoff-plane.service /etc/systemd/system/multi-user.target.wants/liftoff-plane.service
    fi
}

plane_stop() {
    if plane_systemd_running; then
        systemctl stop liftoff-plane.service 2>/dev/null || true
    fi
}

plane_disable() {
    if plane_systemd_running; then
        systemctl disable liftoff-plane.service 2>/dev/null || true
        systemctl daemon-reload || true
    fi
    rm -f /etc/systemd/system/multi-user.target.wants/liftoff-plane.service
}
