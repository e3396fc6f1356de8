/*
 * Xen 4.3.2-4.3.4 (backport be2f2316f1) and 4.4.x (7051d5c872): as 4.2 plus
 * `int checkpointed_stream` after no_incr_generationid.
 *
 * Source: RELEASE-4.4.0 tools/libxc/xenguest.h:94-101,123-130.
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
                      int superpages, int no_incr_generationid, int checkpointed_stream,
                      unsigned long *vm_generationid_addr, struct restore_callbacks *callbacks);
