/*
 * Xen 4.0 (soname libxenguest.so.4.0, shared with 4.1 but ABI-incompatible):
 * libxc handles are plain file descriptors, there is no xentoollog, no
 * restore_callbacks and no stream-type argument.  Self-contained: common.h is
 * NOT loaded for this generation.
 *
 * Source: RELEASE-4.0.0 tools/libxc/xenctrl.h:90 (xc_interface_open),
 * tools/libxc/xenguest.h:60-63 (xc_domain_restore).
 */

#define XC_MAX_ERROR_MSG_LEN 1024
typedef struct xc_error {
    int code;
    char message[1024];
} xc_error;

int xc_interface_open(void);
int xc_interface_close(int xc_handle);
const xc_error *xc_get_last_error(void);
void xc_clear_last_error(void);

int xc_domain_restore(int xc_handle, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, unsigned int console_evtchn,
                      unsigned long *console_mfn, unsigned int hvm, unsigned int pae,
                      int superpages);
