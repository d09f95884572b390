// nfs-mount — mount(2) with the kernel's text options, for the guest's own NFS client.
//
// Why: busybox's `mount -t nfs` speaks the old binary NFS mount data (v2/v3, its own portmapper
// calls), and the guest has no mount.nfs. The kernel parses "vers=4.1,addr=…,port=…" (and for v3
// "mountport=…,mountproto=tcp") by itself, so one system call is all a mount needs.
// Built static by tools/guest/build-initramfs.sh for workloads that say `dpfs-guest-needs: nfs-client`.
//
// Usage: nfs-mount SOURCE TARGET TYPE OPTIONS   (TYPE nfs or nfs4)
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: nfs-mount SOURCE TARGET TYPE OPTIONS\n");
        return 2;
    }
    if (mount(argv[1], argv[2], argv[3], 0, argv[4]) != 0) {
        fprintf(stderr, "nfs-mount: %s on %s (%s, %s): %s\n", argv[1], argv[2], argv[3], argv[4], strerror(errno));
        return 1;
    }
    return 0;
}
