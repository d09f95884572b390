// Out-of-line shims: only what C must evaluate (macro-heavy control-message handling).
#include "CDPFS.h"
#include <sys/ioctl.h>
#include <string.h>
#include <sys/socket.h>

ssize_t CDPFS_recv_with_fds(int socket, void *buffer, size_t length, int *fds, int *fd_count, int *fds_truncated) {
    // Room for 32 descriptors, the most rust-vmm accepts in one vhost-user message.
    union {
        char bytes[CMSG_SPACE(sizeof(int) * 32)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof(control.bytes);
    int room = *fd_count;
    *fd_count = 0;
    *fds_truncated = 0;
    ssize_t received;
    do {
        received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    } while (received < 0 && errno == EINTR);
    if (received < 0) return received;
    if (message.msg_flags & MSG_CTRUNC) *fds_truncated = 1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received_fds = (int *)CMSG_DATA(header);
        for (size_t index = 0; index < count; index++) {
            if (*fd_count < room) {
                fds[(*fd_count)++] = received_fds[index];
            } else {
                close(received_fds[index]);
                *fds_truncated = 1;
            }
        }
    }
    return received;
}

ssize_t CDPFS_send_with_fds(int socket, const void *buffer, size_t length, const int *fds, int fd_count) {
    if (fd_count < 0 || fd_count > 32) { errno = EINVAL; return -1; }
    union {
        char bytes[CMSG_SPACE(sizeof(int) * 32)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = { .iov_base = (void *)buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (fd_count > 0) {
        message.msg_control = control.bytes;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)fd_count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)fd_count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)fd_count);
    }
    ssize_t sent;
    do {
        sent = sendmsg(socket, &message, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

// ---- /dev/fuse ioctls: _IOR/_IOW are function-like macros the importer drops ----
int CDPFS_fuse_dev_clone(int fd, int session_fd) {
    uint32_t source = (uint32_t)session_fd;
    int result;
    do { result = ioctl(fd, _IOR(229, 0, uint32_t), &source); } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

/// Registers `backing_fd` for kernel passthrough; returns the backing id (> 0) or -errno.
int CDPFS_fuse_backing_open(int fuse_fd, int backing_fd) {
    struct CDPFS_fuse_backing_map map = { .fd = backing_fd, .flags = 0, .padding = 0 };
    int result;
    do { result = ioctl(fuse_fd, _IOW(229, 1, struct CDPFS_fuse_backing_map), &map); } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

int CDPFS_fuse_backing_close(int fuse_fd, int backing_id) {
    uint32_t id = (uint32_t)backing_id;
    int result;
    do { result = ioctl(fuse_fd, _IOW(229, 2, uint32_t), &id); } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

