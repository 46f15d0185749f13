# $1 is 0 on erase, 1 on upgrade.
. /usr/share/liftoff-plane/maintainer-common.sh
plane_stop
if [ "$1" -eq 0 ]; then
    plane_disable
fi
