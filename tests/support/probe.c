/* Escape probes, run by tests/sandbox_escape.rs inside `liftoff exec` and,
 * as a control, directly on the host as root (see the scheme at the top of
 * that file).
 *
 * Usage: probe NAME [ARGS]. Each probe makes ONE attempt and prints one
 * line
 *     result LABEL: OUTCOME (DETAIL)
 * where OUTCOME is `ok` (the attempt succeeded), the errno name of the
 * refusal (`EPERM`, `EACCES`, `ENOENT`, `EROFS`, `ENOSYS`, ...), or, for the
 * few probes whose refusal is not an errno, `EMPTY` (a masked file read as
 * empty) or `IGNORED` (a signal the kernel dropped). The probe does not
 * judge: the test says which outcome each run must show. Exit 0 when a
 * result line was printed, 2 on bad usage, 3 when the probe could not set
 * itself up (the message says what failed).
 *
 * Probes that change state undo it when they succeed (unmount, unlink, write
 * back the value just read), so their control run on the host is harmless.
 * Those that could not be undone (reboot, kexec, clock, kill-init,
 * forkbomb) are either made harmless by construction (an argument the
 * kernel rejects only AFTER its privilege check) or never run on the
 * host; the test file says which for each. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
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
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

static const char *errno_name(int e) {
    switch (e) {
#define N(x) case x: return #x;
        N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(E2BIG)
        N(ENOEXEC) N(EBADF) N(ECHILD) N(EAGAIN) N(ENOMEM) N(EACCES)
        N(EFAULT) N(EBUSY) N(EEXIST) N(EXDEV) N(ENODEV) N(ENOTDIR)
        N(EISDIR) N(EINVAL) N(ENFILE) N(EMFILE) N(ENOTTY) N(ENOSPC)
        N(EROFS) N(ENOSYS) N(EOPNOTSUPP) N(ECONNREFUSED) N(ENETUNREACH)
        N(EHOSTUNREACH) N(ESTALE) N(EUSERS) N(EDQUOT) N(ELOOP)
#undef N
    }
    return "E?";
}

/* Prints the result of one attempt: r >= 0 is success, r < 0 a refusal
 * whose reason is errno. Always returns 0 (a result was printed). */
static int result(const char *label, long r) {
    if (r >= 0)
        printf("result %s: ok (returned %ld)\n", label, r);
    else
        printf("result %s: %s (%s)\n", label, errno_name(errno), strerror(errno));
    return 0;
}

static int setup_failed(const char *what) {
    printf("setup failed: %s: %s (%s)\n", what, errno_name(errno), strerror(errno));
    return 3;
}

/* A fresh empty directory under /tmp (the sandbox's private /tmp, or the
 * host's /tmp for the control run). */
static int scratch_dir(char *buf, size_t len) {
    snprintf(buf, len, "/tmp/liftoff-probe-XXXXXX");
    return mkdtemp(buf) ? 0 : -1;
}

/* Reads PATH and writes the same bytes back: a write that changes nothing
 * where it is allowed. */
static int write_back(const char *path) {
    char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return result("read before write-back", -1);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0) {
        printf("setup failed: %s read %zd bytes, nothing to write back\n", path, n);
        return 3;
    }
    fd = open(path, O_WRONLY);
    if (fd < 0) return result("open for writing", -1);
    long r = write(fd, buf, (size_t)n);
    close(fd);
    return result("write back", r);
}

static int parse_hex(const char *s, unsigned char *out, size_t max) {
    size_t n = strlen(s);
    if (n % 2 || n / 2 > max) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *n = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    char dir[64];

    /* --- mounts and roots ------------------------------------------- */
    if (!strcmp(n, "mount") || !strcmp(n, "mount-proc")) {
        int proc = !strcmp(n, "mount-proc");
        if (scratch_dir(dir, sizeof dir) < 0) return setup_failed("mkdtemp");
        long r = mount(proc ? "proc" : "tmpfs", dir, proc ? "proc" : "tmpfs", 0, NULL);
        int e = errno;
        if (r == 0) umount2(dir, MNT_DETACH);
        rmdir(dir);
        errno = e;
        return result(proc ? "mount proc" : "mount tmpfs", r);
    }
    if (!strcmp(n, "pivot_root")) {
        /* The new root does not exist: the kernel checks the caller's
         * CAP_SYS_ADMIN first (EPERM) and resolves the path after
         * (ENOENT), so where permitted this can only fail harmlessly. */
        return result("pivot_root", syscall(SYS_pivot_root, "/nonexistent-liftoff-probe", "/nonexistent-liftoff-probe/old"));
    }
    if (!strcmp(n, "chroot"))
        return result("chroot /tmp", chroot("/tmp"));
    if (!strcmp(n, "setns")) {
        /* Re-entering our own mount namespace needs CAP_SYS_ADMIN and
         * changes nothing where it is allowed. */
        int fd = open("/proc/self/ns/mnt", O_RDONLY);
        if (fd < 0) return result("open /proc/self/ns/mnt", -1);
        return result("setns own mount namespace", setns(fd, CLONE_NEWNS));
    }
    if (!strcmp(n, "unshare-user"))
        return result("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
    if (!strcmp(n, "unshare-ns"))
        return result("unshare(CLONE_NEWNS)", unshare(CLONE_NEWNS));
    if (!strcmp(n, "clone-user")) {
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        int e = errno;
        if (r > 0) waitpid((pid_t)r, NULL, 0);
        errno = e;
        return result("clone(CLONE_NEWUSER)", r);
    }

    /* --- kernel modules, keys, devices -------------------------------- */
    if (!strcmp(n, "module")) {
        /* An empty image: where the caller may load modules the loader
         * rejects it (EINVAL/ENOEXEC), or the kernel has no module support
         * (ENOSYS); only a refusal of the caller gives EPERM. */
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) return setup_failed("open /dev/null");
        return result("finit_module", syscall(SYS_finit_module, fd, "", 0));
    }
    if (!strcmp(n, "init_module"))
        return result("init_module", syscall(SYS_init_module, "", 0, ""));
    if (!strcmp(n, "keyctl"))
        /* KEYCTL_JOIN_SESSION_KEYRING with no name: a new anonymous session
         * keyring for this process only. */
        return result("keyctl join session keyring", syscall(SYS_keyctl, 1, 0));
    if (!strcmp(n, "add_key"))
        /* Into this process's own keyring (KEY_SPEC_PROCESS_KEYRING): gone
         * when the probe exits. */
        return result("add_key", syscall(SYS_add_key, "user", "liftoff-probe", "y", 1, -2));
    if (!strcmp(n, "mknod")) {
        if (scratch_dir(dir, sizeof dir) < 0) return setup_failed("mkdtemp");
        char node[96];
        snprintf(node, sizeof node, "%s/mem", dir);
        long r = mknod(node, S_IFCHR | 0600, makedev(1, 1));
        int e = errno;
        unlink(node);
        rmdir(dir);
        errno = e;
        return result("mknod /dev/mem", r);
    }

    /* --- /proc and /sys ---------------------------------------------- */
    if (!strcmp(n, "write-back") && argc > 2)
        return write_back(argv[2]);
    if (!strcmp(n, "proc-sys")) /* shorthand kept for sandbox_unprivileged.rs */
        return write_back("/proc/sys/kernel/hostname");
    if (!strcmp(n, "sysrq")) {
        /* 'h' only prints the help text to the kernel log. */
        int fd = open("/proc/sysrq-trigger", O_WRONLY);
        if (fd < 0) return result("open /proc/sysrq-trigger", -1);
        return result("write /proc/sysrq-trigger", write(fd, "h", 1));
    }
    if (!strcmp(n, "read") && argc > 2) {
        char b[64];
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return result("open", -1);
        ssize_t r = read(fd, b, sizeof b);
        if (r == 0) {
            printf("result read %s: EMPTY (read 0 bytes)\n", argv[2]);
            return 0;
        }
        return result("read", r);
    }

    if (!strcmp(n, "list") && argc > 2) {
        DIR *d = opendir(argv[2]);
        if (!d) return result("opendir", -1);
        long count = 0;
        while (readdir(d)) count++;
        closedir(d);
        return result("list", count);
    }
    if (!strcmp(n, "create") && argc > 2) {
        /* A new file (never an existing one), removed at once. */
        int fd = open(argv[2], O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd >= 0) {
            close(fd);
            unlink(argv[2]);
        }
        return result("create", fd);
    }

    /* --- processes ----------------------------------------------------- */
    if (!strcmp(n, "ptrace") && argc > 2) {
        /* PTRACE_SEIZE: the same permission check as PTRACE_ATTACH, but the
         * tracee is not stopped; it is detached when the probe exits. */
        return result("ptrace seize", ptrace(PTRACE_SEIZE, atoi(argv[2]), 0, 0));
    }
    if (!strcmp(n, "ptrace-init")) /* shorthand kept for sandbox_unprivileged.rs */
        return result("ptrace seize pid 1", ptrace(PTRACE_SEIZE, 1, 0, 0));
    if (!strcmp(n, "kill") && argc > 2)
        return result("kill", kill(atoi(argv[2]), SIGKILL));
    if (!strcmp(n, "kill-init")) {
        /* Inside a pid namespace the kernel drops signals to its init that
         * init has no handler for, and kill() still returns 0; a SIGKILL
         * it accepted would be pending on pid 1 (or pid 1 gone) right
         * after kill() returns, as delivery is decided in the call. */
        if (kill(1, SIGKILL) < 0) return result("kill pid 1", -1);
        char buf[4096];
        int fd = open("/proc/1/status", O_RDONLY);
        if (fd < 0) return result("pid 1 gone after SIGKILL", 0);
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        buf[r > 0 ? r : 0] = 0;
        const char *keys[] = {"ShdPnd:", "SigPnd:"};
        for (int i = 0; i < 2; i++) {
            char *p = strstr(buf, keys[i]);
            if (p && (strtoull(p + strlen(keys[i]), NULL, 16) & (1ULL << (SIGKILL - 1))))
                return result("SIGKILL pending on pid 1", 0);
        }
        if (strstr(buf, "State:\tZ") || strstr(buf, "State:\tX"))
            return result("pid 1 exiting after SIGKILL", 0);
        printf("result kill pid 1: IGNORED (kill returned 0, no SIGKILL pending on pid 1)\n");
        return 0;
    }

    /* --- kernel facilities ---------------------------------------------- */
    if (!strcmp(n, "bpf")) {
        /* A real two-instruction socket filter (r0 = 0; exit). */
        struct bpf_insn insns[2] = {0};
        insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
        insns[1].code = BPF_JMP | BPF_EXIT;
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
        a.insn_cnt = 2;
        a.insns = (uint64_t)(uintptr_t)insns;
        a.license = (uint64_t)(uintptr_t)"GPL";
        return result("bpf(BPF_PROG_LOAD)", syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a));
    }
    if (!strcmp(n, "perf")) {
        /* A software clock counting this process only. */
        struct perf_event_attr a;
        memset(&a, 0, sizeof a);
        a.size = sizeof a;
        a.type = PERF_TYPE_SOFTWARE;
        a.config = PERF_COUNT_SW_CPU_CLOCK;
        a.exclude_kernel = 1;
        a.exclude_hv = 1;
        return result("perf_event_open", syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
    }
    if (!strcmp(n, "userfaultfd"))
        return result("userfaultfd", syscall(SYS_userfaultfd, 0));
    if (!strcmp(n, "io_uring")) {
        char p[120] = {0};
        return result("io_uring_setup", syscall(SYS_io_uring_setup, 1, p));
    }
    if (!strcmp(n, "reboot"))
        /* A wrong second magic number: the kernel checks CAP_SYS_BOOT first
         * (EPERM) and the magic after (EINVAL), so this never reboots. */
        return result("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, 0x1234, LINUX_REBOOT_CMD_POWER_OFF, 0));
    if (!strcmp(n, "kexec"))
        /* A foreign architecture in the flags: the kernel checks
         * CAP_SYS_BOOT first (EPERM) and the architecture after (EINVAL),
         * so this never loads or unloads an image. */
        return result("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 40UL << 16 /* KEXEC_ARCH_ARM */));
    if (!strcmp(n, "clock")) {
        /* Sets the clock to what it reads, so even an escape moves it by
         * microseconds at most; the test never runs this on the host. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return result("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
    }
    if (!strcmp(n, "swapon"))
        /* A path that does not exist: CAP_SYS_ADMIN is checked first
         * (EPERM), the path after (ENOENT). */
        return result("swapon", syscall(SYS_swapon, "/nonexistent-liftoff-probe/swap", 0));
    if (!strcmp(n, "handle-of") && argc > 2) {
        /* Prints the file handle of PATH as hex (a setup helper for
         * open_by_handle, run on the host). */
        unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
        struct file_handle *h = (struct file_handle *)buf;
        int mount_id;
        h->handle_bytes = MAX_HANDLE_SZ;
        if (name_to_handle_at(AT_FDCWD, argv[2], h, &mount_id, 0) < 0)
            return setup_failed("name_to_handle_at");
        for (size_t i = 0; i < sizeof(struct file_handle) + h->handle_bytes; i++) printf("%02x", buf[i]);
        printf("\n");
        return 0;
    }
    if (!strcmp(n, "open_by_handle") && argc > 3) {
        /* Opens a file by a handle made on the host (handle-of), relative
         * to MOUNTPATH on the same filesystem: the container escape
         * "shocker" used. */
        unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
        if (parse_hex(argv[2], buf, sizeof buf) < (int)sizeof(struct file_handle)) return 2;
        int mfd = open(argv[3], O_RDONLY);
        if (mfd < 0) return setup_failed("open MOUNTPATH");
        return result("open_by_handle_at", syscall(SYS_open_by_handle_at, mfd, buf, O_RDONLY));
    }
    if (!strcmp(n, "tiocsti")) {
        /* Pushes a byte into the input of a terminal the probe opens
         * itself (a new pty), so it types into nothing else. */
        int m = posix_openpt(O_RDWR | O_NOCTTY);
        if (m < 0) return result("open /dev/ptmx", -1);
        if (grantpt(m) < 0 || unlockpt(m) < 0) return setup_failed("unlockpt");
        int s = open(ptsname(m), O_RDWR | O_NOCTTY);
        if (s < 0) return result("open pty", -1);
        char c = 'x';
        return result("ioctl TIOCSTI", ioctl(s, TIOCSTI, &c));
    }

    /* --- identity -------------------------------------------------------- */
    if (!strcmp(n, "setuid0")) {
        long r = setuid(0);
        if (r == 0 && getuid() != 0) {
            printf("result setuid(0): EPERM (returned 0 but uid is %d)\n", getuid());
            return 0;
        }
        return result("setuid(0)", r);
    }
    if (!strcmp(n, "chown-root")) {
        /* A file in the current directory (the workspace in the sandbox). */
        char f[64];
        snprintf(f, sizeof f, "chown-me-%d", getpid());
        int fd = open(f, O_CREAT | O_WRONLY | O_EXCL, 0644);
        if (fd < 0) return setup_failed("create a file in the current directory");
        close(fd);
        long r = chown(f, 0, 0);
        int e = errno;
        unlink(f);
        errno = e;
        return result("chown to root", r);
    }

    /* --- network ----------------------------------------------------------- */
    if (!strcmp(n, "connect") && argc > 3) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) return result("socket", -1);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        return result("connect", connect(s, (struct sockaddr *)&a, sizeof a));
    }
    if (!strcmp(n, "abstract") && argc > 2) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) return result("socket", -1);
        struct sockaddr_un a = {0};
        a.sun_family = AF_UNIX;
        size_t l = strlen(argv[2]);
        if (l + 1 > sizeof a.sun_path) return 2;
        memcpy(a.sun_path + 1, argv[2], l);
        return result("connect abstract socket", connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + l));
    }

    /* --- resources ----------------------------------------------------------- */
    if (!strcmp(n, "forkbomb")) {
        int count = 0;
        for (;;) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) break;
            if (++count > 100000) {
                printf("result forkbomb: ok (forked %d)\n", count);
                return 0;
            }
        }
        printf("result forkbomb: %s (forked %d before fork failed)\n", errno_name(errno), count);
        return 0;
    }
    if (!strcmp(n, "memhog")) {
        size_t mb = argc > 2 ? (size_t)atoi(argv[2]) : 1024;
        for (size_t i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) { printf("result memhog: ENOMEM (malloc failed at %zu MiB)\n", i); return 0; }
            memset(p, 1, 1 << 20);
        }
        printf("result memhog: ok (allocated %zu MiB)\n", mb);
        return 0;
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
