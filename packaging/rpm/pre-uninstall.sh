# $1 is 0 on erase, 1 on upgrade.
. /usr/share/liftoff/maintainer-common.sh
liftoff_stop
liftoff_release_roots
if [ "$1" -eq 0 ]; then
    liftoff_disable
    liftoff_apparmor_remove
fi
