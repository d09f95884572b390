// The one C module of DPFS in Swift: every system header the engine uses, plus shims for what the
// Swift importer cannot see (function-like macros, compiler intrinsics). Each shim says why it exists.
#ifndef CDPFS_H
#define CDPFS_H

// The Swift importer does not see the target's cSettings, so the feature macro lives here too.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
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
#include <sys/syscall.h>
#include <linux/fuse.h>
#include <linux/virtio_ring.h>
#include <numa.h>
#include <numaif.h>
#include <liburing.h>
#include <infiniband/verbs.h>
#include <nfsc/libnfs.h>

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

#endif // __linux__
#endif // CDPFS_H
