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


// libnfs 4.0 exports these from libnfs.so.13 but declares them in its private header only.
struct rpc_pdu;
struct rpc_pdu *rpc_allocate_pdu2(struct rpc_context *rpc, int program, int version, int procedure, rpc_cb cb,
                                  void *private_data, zdrproc_t zdr_decode_fn, int zdr_bufsize, size_t alloc_hint);
int rpc_queue_pdu(struct rpc_context *rpc, struct rpc_pdu *pdu);
void rpc_free_pdu(struct rpc_context *rpc, struct rpc_pdu *pdu);

// The start of libnfs 4.0's private `struct rpc_pdu`: the encoder sits after the queue link and the
// xid. Checked on every call (the encoder's operation and buffer size are known), never assumed.
struct CDPFS_libnfs40_pdu_head {
    struct rpc_pdu *next;
    uint32_t xid;
    ZDR zdr;
};

// libnfs's encode buffer before any alloc hint (ZDR_ENCODEBUF_MINSIZE in its private header).
enum { CDPFS_libnfs_encode_bytes_min = 4096 };

// The reply's results, left where they lie: our parser reads them inside the callback. libnfs
// calls the decoder with ZDR_DECODE at the results' position; zdr_free (ZDR_FREE) is a no-op in 4.0.
static uint32_t CDPFS_nfs4_capture(ZDR *zdr, void *where, ...) {
    struct CDPFS_nfs4_reply *reply = where;
    if (zdr->x_op != ZDR_DECODE) return 1;
    if (zdr->pos < 0 || zdr->pos > zdr->size) return 0;
    reply->bytes = (const uint8_t *)zdr->buf + zdr->pos;
    reply->count = (uint32_t)(zdr->size - zdr->pos);
    zdr->pos = zdr->size;
    return 1;
}

struct rpc_pdu *CDPFS_nfs4_begin(struct rpc_context *rpc, rpc_cb cb, void *private_data, size_t room_bytes,
                                 uint8_t **area, size_t *area_bytes, int *layout_wrong) {
    *layout_wrong = 0;
    if (room_bytes > (size_t)64 << 20) return NULL;
    struct rpc_pdu *pdu = rpc_allocate_pdu2(rpc, NFS4_PROGRAM, NFS_V4, NFSPROC4_COMPOUND, cb, private_data,
                                            (zdrproc_t)CDPFS_nfs4_capture, sizeof(struct CDPFS_nfs4_reply), room_bytes);
    if (pdu == NULL) return NULL;
    struct CDPFS_libnfs40_pdu_head *head = (struct CDPFS_libnfs40_pdu_head *)pdu;
    if (head->zdr.x_op != ZDR_ENCODE || head->zdr.size != (int)(CDPFS_libnfs_encode_bytes_min + room_bytes)
        || head->zdr.pos <= 0 || head->zdr.pos > head->zdr.size) {
        rpc_free_pdu(rpc, pdu);
        *layout_wrong = 1;
        return NULL;
    }
    *area = (uint8_t *)head->zdr.buf + head->zdr.pos;
    *area_bytes = (size_t)(head->zdr.size - head->zdr.pos);
    return pdu;
}

int CDPFS_nfs4_send(struct rpc_context *rpc, struct rpc_pdu *pdu, size_t written) {
    struct CDPFS_libnfs40_pdu_head *head = (struct CDPFS_libnfs40_pdu_head *)pdu;
    if (written > (size_t)(head->zdr.size - head->zdr.pos) || written % 4 != 0) {
        rpc_free_pdu(rpc, pdu);
        return -1;
    }
    head->zdr.pos += (int)written;
    if (rpc_queue_pdu(rpc, pdu) != 0) return -1;
    return 0;
}

void CDPFS_nfs4_abandon(struct rpc_context *rpc, struct rpc_pdu *pdu) { rpc_free_pdu(rpc, pdu); }
