/* Escape probes run inside `liftoff exec` by tests/sandbox_escape.rs.
 * Usage: probe NAME [ARGS]. Prints one line; exit 0 when the attempt was
 * BLOCKED, 1 when it SUCCEEDED (an escape), 2 on bad usage. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

static int verdict(const char *what, long r) {
    if (r < 0) {
        printf("blocked %s: %s\n", what, strerror(errno));
        return 0;
    }
    printf("ESCAPED %s (result %ld)\n", what, r);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *n = argv[1];
    if (!strcmp(n, "mount"))
        return verdict("mount tmpfs", mount("tmpfs", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(n, "mount-proc"))
        return verdict("mount proc", mount("proc", "/tmp", "proc", 0, NULL));
    if (!strcmp(n, "pivot_root")) {
        mkdir("/tmp/old", 0755);
        return verdict("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp/old"));
    }
    if (!strcmp(n, "chroot"))
        return verdict("chroot", chroot("/tmp"));
    if (!strcmp(n, "setns")) {
        /* our own namespace: the open succeeds, setns must not */
        int fd = open("/proc/self/ns/mnt", O_RDONLY);
        if (fd < 0) return verdict("open /proc/self/ns/mnt", -1);
        if (setns(fd, 0) == 0) return verdict("setns", 0);
        fd = open("/proc/1/ns/mnt", O_RDONLY);
        if (fd >= 0 && setns(fd, 0) == 0) return verdict("setns into init's", 0);
        return verdict("setns", -1);
    }
    if (!strcmp(n, "unshare-user"))
        return verdict("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
    if (!strcmp(n, "clone-user")) {
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        return verdict("clone(CLONE_NEWUSER)", r);
    }
    if (!strcmp(n, "unshare-ns"))
        return verdict("unshare(CLONE_NEWNS)", unshare(CLONE_NEWNS));
    if (!strcmp(n, "module")) {
        int fd = open("/dev/null", O_RDONLY);
        return verdict("finit_module", syscall(SYS_finit_module, fd, "", 0));
    }
    if (!strcmp(n, "init_module"))
        return verdict("init_module", syscall(SYS_init_module, "", 0, ""));
    if (!strcmp(n, "keyctl"))
        return verdict("keyctl join session keyring", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, 0));
    if (!strcmp(n, "add_key"))
        return verdict("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -3 /* session */));
    if (!strcmp(n, "mknod"))
        return verdict("mknod /tmp/mem", mknod("/tmp/mem", S_IFCHR | 0666, makedev(1, 1)));
    if (!strcmp(n, "proc-sys")) {
        int fd = open("/proc/sys/kernel/hostname", O_WRONLY);
        if (fd < 0) return verdict("open /proc/sys/kernel/hostname for writing", -1);
        return verdict("write /proc/sys/kernel/hostname", write(fd, "pwned\n", 6));
    }
    if (!strcmp(n, "sysrq")) {
        int fd = open("/proc/sysrq-trigger", O_WRONLY);
        if (fd < 0) return verdict("open /proc/sysrq-trigger", -1);
        return verdict("write /proc/sysrq-trigger", write(fd, "h", 1));
    }
    if (!strcmp(n, "sys")) {
        int fd = open("/sys/kernel/uevent_helper", O_WRONLY);
        if (fd < 0) return verdict("open /sys/kernel/uevent_helper", -1);
        return verdict("write /sys/kernel/uevent_helper", write(fd, "/x", 2));
    }
    if (!strcmp(n, "kcore")) {
        char b[16];
        int fd = open("/proc/kcore", O_RDONLY);
        if (fd < 0) return verdict("open /proc/kcore", -1);
        long r = read(fd, b, sizeof b);
        return verdict("read /proc/kcore", r > 0 ? r : -1);
    }
    if (!strcmp(n, "ptrace-init"))
        return verdict("ptrace attach pid 1", ptrace(PTRACE_ATTACH, 1, 0, 0));
    if (!strcmp(n, "ptrace-pid") && argc > 2)
        return verdict("ptrace attach", ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0));
    if (!strcmp(n, "kill") && argc > 2)
        return verdict("kill", kill(atoi(argv[2]), SIGKILL));
    if (!strcmp(n, "kill-init"))
        return verdict("kill pid 1", kill(1, SIGKILL) < 0 ? -1 : (usleep(100000), kill(1, 0) == 0 ? -1 : 0));
    if (!strcmp(n, "bpf")) {
        char attr[128] = {0};
        return verdict("bpf", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, attr, sizeof attr));
    }
    if (!strcmp(n, "perf"))
        return verdict("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    if (!strcmp(n, "userfaultfd"))
        return verdict("userfaultfd", syscall(SYS_userfaultfd, 0));
    if (!strcmp(n, "io_uring")) {
        char p[120] = {0};
        return verdict("io_uring_setup", syscall(SYS_io_uring_setup, 1, p));
    }
    if (!strcmp(n, "reboot"))
        return verdict("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321FEDC, 0));
    if (!strcmp(n, "kexec"))
        return verdict("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    if (!strcmp(n, "clock")) {
        struct timespec ts = {1, 0};
        return verdict("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    }
    if (!strcmp(n, "swapon"))
        return verdict("swapon", syscall(SYS_swapon, "/tmp/x", 0));
    if (!strcmp(n, "open_by_handle")) {
        char h[64] = {0};
        ((unsigned *)h)[0] = 8;
        return verdict("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, h, 0));
    }
    if (!strcmp(n, "tiocsti")) {
        char c = 'x';
        return verdict("ioctl TIOCSTI", ioctl(0, TIOCSTI, &c));
    }
    if (!strcmp(n, "setuid0"))
        return verdict("setuid(0)", setuid(0) < 0 ? -1 : (getuid() == 0 ? 0 : -1));
    if (!strcmp(n, "chown-root")) {
        int fd = open("/mnt/workspace/chown-me", O_CREAT | O_WRONLY, 0644);
        close(fd);
        return verdict("chown to root", chown("/mnt/workspace/chown-me", 0, 0));
    }
    if (!strcmp(n, "connect") && argc > 3) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        return verdict("connect", connect(s, (struct sockaddr *)&a, sizeof a));
    }
    if (!strcmp(n, "abstract") && argc > 2) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {0};
        a.sun_family = AF_UNIX;
        size_t l = strlen(argv[2]);
        memcpy(a.sun_path + 1, argv[2], l);
        return verdict("connect abstract socket", connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + l));
    }
    if (!strcmp(n, "forkbomb")) {
        int count = 0;
        for (;;) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) break;
            count++;
            if (count > 100000) break;
        }
        printf("forked %d before failing\n", count);
        return count > 100000;
    }
    if (!strcmp(n, "memhog")) {
        size_t mb = argc > 2 ? atoi(argv[2]) : 1024;
        for (size_t i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) { printf("malloc failed at %zu MiB\n", i); return 0; }
            memset(p, 1, 1 << 20);
        }
        printf("ESCAPED allocated %zu MiB\n", mb);
        return 1;
    }
    if (!strcmp(n, "daemon") && argc > 2) {
        /* double fork + setsid: a grandchild that outlives its parent */
        pid_t p = fork();
        if (p == 0) {
            setsid();
            if (fork() == 0) {
                signal(SIGTERM, SIG_IGN);
                execl("/bin/sleep", "sleep", argv[2], (char *)NULL);
                _exit(1);
            }
            _exit(0);
        }
        waitpid(p, NULL, 0);
        printf("daemon started\n");
        fflush(stdout);
        signal(SIGTERM, SIG_IGN);
        for (;;) pause();
    }
    fprintf(stderr, "unknown probe %s\n", n);
    return 2;
}
