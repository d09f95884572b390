// The one C module of DPFS in Swift: every system header the engine uses, plus shims for what the
// Swift importer cannot see (function-like macros, compiler intrinsics). Each shim says why it exists.
#ifndef CDPFS_H
#define CDPFS_H

// The Swift importer does not see the target's cSettings, so the feature macro lives here too.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

// fd_set names its member `fds_bits` under _GNU_SOURCE (__USE_XOPEN) and `__fds_bits` without it,
// and Swift's Glibc and Dispatch modules are built without it. A module that imports both theirs
// and ours then holds two different definitions of one struct, which clang reports as errors
// and, depending on the order the implicit module cache is filled in, as a fatal one (seen in a
// ThreadSanitizer build). So sys/select.h, which defines fd_set, is read here first with
// __USE_XOPEN hidden: fd_set matches theirs; nothing else in that header depends on it.
#include <features.h>
#ifdef __USE_XOPEN
#undef __USE_XOPEN
#include <sys/select.h>
#define __USE_XOPEN 1
#else
#include <sys/select.h>
#endif

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <unistd.h>
#include <time.h>
#include <sys/time.h>      // libnfs needs struct timeval before nfsc/libnfs.h
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>      // the NFS backend sleeps on an epoll set of its connections
#include <sys/syscall.h>
#include <fcntl.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/fsuid.h>
#include <sys/xattr.h>
#include <sys/uio.h>
#include <stdio.h>
#include <string.h>
#include <linux/openat2.h>
#include <linux/fuse.h>
#include <linux/virtio_ring.h>
#include <numa.h>
#include <numaif.h>
#include <liburing.h>
#include <infiniband/verbs.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-mount.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>

// libnfs 4.0 exports these from libnfs.so but declares them only in its private header: the NFS
// backend turns libnfs's own reconnect (which resends every request, even non-idempotent ones)
// off and runs its own.
void rpc_set_autoreconnect(struct rpc_context *rpc, int num_retries);
void rpc_set_timeout(struct rpc_context *rpc, int timeout);

// NFSv4 COMPOUNDs in our own XDR over libnfs's transport (connection, AUTH_SYS, record marking,
// xid matching). libnfs 4.0's own `rpc_nfs4_compound_async` encodes from its generated structures
// into a 4 KiB buffer; these hand the caller the room after the RPC header instead:
//   begin   → a pdu with `room_bytes` (beyond libnfs's 4 KiB) to write the COMPOUND4args into;
//   send    → queues it with `written` bytes of arguments;
//   abandon → frees a begun pdu that will not be sent.
// The reply's COMPOUND4res is not decoded by libnfs: the callback's `data` (on RPC_STATUS_SUCCESS)
// is a `CDPFS_nfs4_reply` naming the raw bytes, valid until the callback returns.
struct CDPFS_nfs4_reply {
    const uint8_t *bytes;
    uint32_t count;
};

/// NULL when out of memory or when libnfs's private pdu layout is not libnfs 4.0's (`*layout_wrong`
/// is then 1: the caller must refuse NFSv4 rather than guess).
struct rpc_pdu *CDPFS_nfs4_begin(struct rpc_context *rpc, rpc_cb cb, void *private_data, size_t room_bytes,
                                 uint8_t **area, size_t *area_bytes, int *layout_wrong);
/// 0 when queued; -1 when `written` exceeds the room (the pdu is freed).
int CDPFS_nfs4_send(struct rpc_context *rpc, struct rpc_pdu *pdu, size_t written);
void CDPFS_nfs4_abandon(struct rpc_context *rpc, struct rpc_pdu *pdu);

#ifdef __linux__

/// Cycle counter for per-transition timestamps: `__rdtsc` is a compiler intrinsic, which Swift
/// cannot call directly. Serialising is not needed: we time intervals of hundreds of cycles or more.
static inline uint64_t CDPFS_cycles(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
}

/// Spin-wait hint for busy-polling loops (`pause` on x86): an intrinsic, invisible to Swift.
/// The calling thread's id (per-thread priorities: setpriority(PRIO_PROCESS, tid, ...)).
static inline int CDPFS_gettid(void) {
    return (int)syscall(SYS_gettid);
}

/// A counter another thread stores with plain increments, read without tearing (a scrape of a
/// poller's counters): relaxed, so it costs the reader one load and the writer nothing.
static inline uint64_t CDPFS_load_relaxed_u64(const uint64_t *counter) {
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

static inline void CDPFS_cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/// Pins the calling thread to one CPU. CPU_ZERO/CPU_SET are function-like macros.
static inline int CDPFS_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/// MAP_HUGE_2MB is an expression macro (21 << MAP_HUGE_SHIFT) that the importer drops.
static inline int CDPFS_map_huge_2mb(void) {
    return MAP_HUGETLB | (21 << MAP_HUGE_SHIFT);
}

/// Receives one message and up to `*fd_count` SCM_RIGHTS file descriptors (vhost-user passes
/// memory regions and eventfds this way). CMSG_* are macros, so the walk over control messages
/// lives in C. On return `*fd_count` holds the number of descriptors received; descriptors beyond
/// the caller's room are closed and reported through `*fds_truncated`. Returns recvmsg's result.
ssize_t CDPFS_recv_with_fds(int socket, void *buffer, size_t length, int *fds, int *fd_count, int *fds_truncated);

/// Sends `length` bytes with `fd_count` file descriptors attached as SCM_RIGHTS (the front-end
/// side of vhost-user, used by the load generator and tests). Returns sendmsg's result.
ssize_t CDPFS_send_with_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count);

/// `fuse_statx_in` (protocol 7.39) is newer than Debian 12's kernel headers: the same layout,
/// declared here so backends read it by field name like every other argument struct.
struct CDPFS_fuse_statx_in {
    uint32_t getattr_flags;
    uint32_t reserved;
    uint64_t fh;
    uint32_t sx_flags;
    uint32_t sx_mask;
};

/// openat2(2) has no glibc wrapper in Debian 12, and `syscall` is variadic (Swift cannot call it).
/// Returns the fd or -1 with errno set; retries EINTR.
static inline int CDPFS_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    long result;
    do {
        result = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    } while (result < 0 && errno == EINTR);
    return (int)result;
}

/// Drops the calling thread's supplementary groups (the raw syscall is per thread; glibc's
/// setgroups would change every thread of the process). A poller acting for a guest caller must not
/// carry root's groups into the caller's permission checks.
static inline int CDPFS_thread_drop_supplementary_groups(void) {
    return (int)syscall(SYS_setgroups, 0, NULL);
}

/// The calling thread holds exactly `group` as its supplementary group (the raw syscall: this
/// thread only), for one request whose caller the kernel found to be a member.
static inline int CDPFS_thread_set_one_supplementary_group(gid_t group) {
    return (int)syscall(SYS_setgroups, 1, &group);
}

/// Gives the calling thread a file-system context of its own (CLONE_FS: umask, cwd, root) and a
/// umask of 0 in it. The kernel sends create modes with the guest caller's umask already applied,
/// so a poller creating for a guest must not apply a second one; a process-wide umask(0) would
/// also widen everything else the process creates. Returns 0, or -1 with errno.
static inline int CDPFS_thread_private_umask_zero(void) {
    if (unshare(CLONE_FS) != 0) return -1;
    umask(0);
    return 0;
}

/// `stx_mnt_id` sits at byte 144 of the kernel's 256-byte `struct statx`; whether the glibc or the
/// kernel declaration is in force depends on include order (glibc 2.36's predates the field), so
/// it is read at its ABI offset.
_Static_assert(sizeof(struct statx) == 256, "struct statx is 256 bytes in every ABI");
static inline uint64_t CDPFS_statx_mount_id(const struct statx *status) {
    uint64_t mount_id;
    memcpy(&mount_id, (const char *)status + 144, sizeof(mount_id));
    return mount_id;
}

/// statx(2): in Swift the function's name is taken by its struct. Returns 0 or the errno.
static inline int CDPFS_statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *result) {
    int status;
    do {
        status = statx(dirfd, path, flags, mask, result);
    } while (status < 0 && errno == EINTR);
    return status == 0 ? 0 : errno;
}

/// STATX_MNT_ID and the AT_* flags statx needs, as plain values (some are macros of macros).
static inline unsigned int CDPFS_statx_mask_basic_and_mount_id(void) { return STATX_BASIC_STATS | 0x1000U; }

// ---- /dev/fuse: what Debian 12's 7.38 headers lack (protocol 7.40 passthrough, 7.42 io_uring) ----
// The layouts are the kernel's (include/uapi/linux/fuse.h); FUSEDeviceTests checks their sizes.

/// FUSE_DEV_IOC_BACKING_OPEN's argument (7.40): the daemon's descriptor of the backing file.
struct CDPFS_fuse_backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};

/// `fuse_uring_ent_in_out` (7.42): per ring entry, written by the kernel with a request and by the
/// daemon with its reply (payload_sz = bytes of the payload buffer in use).
struct CDPFS_fuse_uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

/// `fuse_uring_req_header` (7.42): the first iovec of a ring entry's REGISTER.
struct CDPFS_fuse_uring_req_header {
    char in_out[128];     // fuse_in_header on fetch, fuse_out_header on commit
    char op_in[128];      // the opcode's fixed argument struct (in_args[0])
    struct CDPFS_fuse_uring_ent_in_out ring_ent_in_out;
};

/// `fuse_uring_cmd_req` (7.42): in the 80-byte command area of an SQE128.
struct CDPFS_fuse_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

_Static_assert(sizeof(struct CDPFS_fuse_uring_req_header) == 288, "fuse_uring_req_header is 288 bytes");
_Static_assert(sizeof(struct CDPFS_fuse_uring_cmd_req) == 24, "fuse_uring_cmd_req is 24 bytes");

enum { CDPFS_FUSE_IO_URING_CMD_REGISTER = 1, CDPFS_FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2 };

/// The /dev/fuse ioctls (in shims.c: <sys/ioctl.h> clashes with the Glibc module's fd_set here).
/// Each returns the ioctl's result, or -errno; EINTR is retried.
int CDPFS_fuse_dev_clone(int fd, int session_fd);
/// Registers `backing_fd` for kernel passthrough; returns the backing id (> 0) or -errno.
int CDPFS_fuse_backing_open(int fuse_fd, int backing_fd);
int CDPFS_fuse_backing_close(int fuse_fd, int backing_id);

/// Fills an SQE128 with a FUSE-over-io_uring command (IORING_OP_URING_CMD on /dev/fuse): REGISTER
/// passes the entry's two iovecs (header, payload); COMMIT_AND_FETCH names the request it answers.
/// liburing 2.3 has no helper for the command area.
static inline void CDPFS_prep_fuse_uring_cmd(struct io_uring_sqe *sqe, int fuse_fd, uint32_t command,
                                             uint16_t qid, uint64_t commit_id, const struct iovec *iovecs,
                                             uint32_t iovec_count, uint64_t user_data) {
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = command;
    sqe->addr = (uint64_t)(uintptr_t)iovecs;
    sqe->len = iovec_count;
    sqe->user_data = user_data;
    struct CDPFS_fuse_uring_cmd_req *request = (struct CDPFS_fuse_uring_cmd_req *)sqe->cmd;
    request->qid = qid;
    request->commit_id = commit_id;
}

/// io_uring_queue_init with setup flags (SQE128 for ring commands); returns 0 or -errno.
static inline int CDPFS_uring_init_flags(unsigned entries, struct io_uring *ring, unsigned flags) {
    return io_uring_queue_init(entries, ring, flags);
}

#endif // __linux__
#endif // CDPFS_H
