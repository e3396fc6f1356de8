/*
 * Xen 4.5 and 4.6: the same prototype and the same 16-byte restore_callbacks,
 * but slot 0 changed meaning: toolstack_restore in 4.5 (legacy stream),
 * checkpoint in 4.6 (migration v2).  The union names both; the binding lets
 * a caller set only the one its release has.
 *
 * Source: RELEASE-4.5.0 tools/libxc/include/xenguest.h:93-100,120-126;
 * RELEASE-4.6.0 tools/libxc/include/xenguest.h:86-96,116-122.
 */

typedef uint16_t domid_t;

#define XGR_CHECKPOINT_ERROR 0
#define XGR_CHECKPOINT_SUCCESS 1
#define XGR_CHECKPOINT_FAILOVER 2

struct restore_callbacks {
    union {
        int (*toolstack_restore)(uint32_t domid, const uint8_t *buf, uint32_t size, void *data);
        int (*checkpoint)(void *data);
    };
    void *data;
};

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, domid_t store_domid,
                      unsigned int console_evtchn, unsigned long *console_mfn,
                      domid_t console_domid, unsigned int hvm, unsigned int pae,
                      int superpages, int checkpointed_stream,
                      struct restore_callbacks *callbacks);
