// Out-of-line shims live here; today every shim is static inline in include/CDPFS.h, and this file
// only keeps the C target non-empty.
#include "CDPFS.h"

int CDPFS_shims_present(void) { return 1; }
