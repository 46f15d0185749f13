. /usr/share/liftoff-plane/maintainer-common.sh
plane_create_user
plane_create_dirs
plane_enable_and_maybe_start
