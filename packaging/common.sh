# Shared by the .deb and .rpm maintainer scripts (sourced, POSIX sh).

LIFTOFF_ENV=/etc/liftoff/liftoff.env
LIFTOFF_STATE=/var/lib/liftoff
LIFTOFF_CACHE=/var/cache/liftoff
LIFTOFF_APPARMOR_SRC=/usr/share/liftoff/apparmor/usr.bin.liftoff
LIFTOFF_APPARMOR_DST=/etc/apparmor.d/usr.bin.liftoff

liftoff_create_user() {
    getent group liftoff >/dev/null || groupadd --system liftoff
    getent passwd liftoff >/dev/null || useradd --system --gid liftoff \
        --home-dir "$LIFTOFF_STATE" --no-create-home --shell /usr/sbin/nologin \
        --comment "liftoff worker pool launcher" liftoff
}

liftoff_create_dirs() {
    # 0711: runs (an unprivileged host id) pass through to their workspaces;
    # nobody but root can list it.
    install -d -m 0711 -o root -g root "$LIFTOFF_STATE"
    install -d -m 0755 -o root -g root "$LIFTOFF_CACHE"
    install -d -m 0775 -o root -g liftoff "$LIFTOFF_CACHE/providers"
    [ -f "$LIFTOFF_ENV" ] && chmod 0600 "$LIFTOFF_ENV" && chown root:root "$LIFTOFF_ENV"
    return 0
}

# Only where AppArmor is present and knows the `userns` rule (AppArmor 4, as
# on Ubuntu 23.10+, which restricts unprivileged user namespaces): install and
# load the profile that allows them. Older AppArmor neither restricts user
# namespaces nor parses the rule.
liftoff_apparmor_load() {
    [ -d /etc/apparmor.d ] || return 0
    [ -e /etc/apparmor.d/abi/4.0 ] || return 0
    [ -f "$LIFTOFF_APPARMOR_SRC" ] || return 0
    cp "$LIFTOFF_APPARMOR_SRC" "$LIFTOFF_APPARMOR_DST"
    if command -v apparmor_parser >/dev/null 2>&1 && [ -d /sys/kernel/security/apparmor ]; then
        apparmor_parser -r -W "$LIFTOFF_APPARMOR_DST" || echo "liftoff: could not load the AppArmor profile; on Ubuntu 23.10+ runs need it (see docs/operations.md)" >&2
    fi
    return 0
}

liftoff_apparmor_remove() {
    [ -f "$LIFTOFF_APPARMOR_DST" ] || return 0
    if command -v apparmor_parser >/dev/null 2>&1 && [ -d /sys/kernel/security/apparmor ]; then
        apparmor_parser -R "$LIFTOFF_APPARMOR_DST" 2>/dev/null || true
    fi
    rm -f "$LIFTOFF_APPARMOR_DST"
}

liftoff_has_token() {
    [ -f "$LIFTOFF_ENV" ] && grep -Eq '^[[:space:]]*(export[[:space:]]+)?SPACELIFT_TOKEN=.+' "$LIFTOFF_ENV"
}

liftoff_systemd_running() {
    [ -d /run/systemd/system ]
}

# Enable always; start (or restart on upgrade) only once a token is configured.
liftoff_enable_and_maybe_start() {
    if liftoff_systemd_running; then
        systemctl daemon-reload || true
        systemctl enable liftoff.service || true
        if liftoff_has_token; then
            systemctl restart liftoff.service || true
        else
            echo "liftoff: enabled; set SPACELIFT_TOKEN in $LIFTOFF_ENV, then: systemctl restart liftoff" >&2
        fi
    else
        # No running systemd (a container, an image build): enable for next boot.
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /lib/systemd/system/liftoff.service /etc/systemd/system/multi-user.target.wants/liftoff.service
    fi
}

liftoff_stop() {
    if liftoff_systemd_running; then
        systemctl stop liftoff.service 2>/dev/null || true
    fi
}

liftoff_disable() {
    if liftoff_systemd_running; then
        systemctl disable liftoff.service 2>/dev/null || true
        systemctl daemon-reload || true
    fi
    rm -f /etc/systemd/system/multi-user.target.wants/liftoff.service
}

# The ready-made job roots a root launcher keeps (mount namespaces pinned
# under /run/liftoff/roots, see docs/security.md): released once liftoff has
# stopped. An upgraded launcher never uses an older one's roots anyway.
liftoff_release_roots() {
    for m in /run/liftoff/roots/*/mnt; do
        if [ -e "$m" ]; then umount -l "$m" 2>/dev/null || true; fi
    done
    umount -l /run/liftoff/roots 2>/dev/null || true
    rm -rf /run/liftoff/roots
}

liftoff_purge_state() {
    liftoff_release_roots
    rm -rf "$LIFTOFF_STATE" "$LIFTOFF_CACHE" /run/liftoff
    rmdir /etc/liftoff 2>/dev/null || true
}
