/*
 * Xen 4.2.x, 4.3.0 and 4.3.1: restore_callbacks with toolstack_restore, the
 * VM generation-id arguments, still no stream-type argument.
 *
 * Source: RELEASE-4.2.0 tools/libxc/xenguest.h:93-100,119-126;
 * RELEASE-4.3.0 tools/libxc/xenguest.h:94-101,122-129.
 */

typedef uint16_t domid_t;

struct restore_callbacks {
    int (*toolstack_restore)(uint32_t domid, const uint8_t *buf, uint32_t size, void *data);
    void *data;
};

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, domid_t store_domid,
                      unsigned int console_evtchn, unsigned long *console_mfn,
                      domid_t console_domid, unsigned int hvm, unsigned int pae,
                      int superpages, int no_incr_generationid,
                      unsigned long *vm_generationid_addr, struct restore_callbacks *callbacks);
