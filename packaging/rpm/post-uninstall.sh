# RPM has no purge: state in /var/lib/liftoff and /var/cache/liftoff is kept on
# erase; delete it by hand when the host is retired.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
