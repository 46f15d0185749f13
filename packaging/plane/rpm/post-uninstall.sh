# RPM has no purge: the data directory /var/lib/liftoff-plane (the pool CA,
# the database) is kept on erase; delete it by hand when the plane is retired.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
