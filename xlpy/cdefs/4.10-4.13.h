/*
 * Xen 4.10-4.13: superpages dropped, domids widened to uint32_t.
 *
 * Source: RELEASE-4.10.0 tools/libxc/include/xenguest.h:118-121,140-177,196-202.
 */

typedef unsigned long xen_pfn_t;

typedef enum {
    XC_MIG_STREAM_NONE,
    XC_MIG_STREAM_REMUS,
    XC_MIG_STREAM_COLO
} xc_migration_stream_t;

#define XGR_CHECKPOINT_ERROR 0
#define XGR_CHECKPOINT_SUCCESS 1
#define XGR_CHECKPOINT_FAILOVER 2

struct restore_callbacks {
    int (*suspend)(void *data);
    int (*postcopy)(void *data);
    int (*checkpoint)(void *data);
    int (*wait_checkpoint)(void *data);
    void (*restore_results)(xen_pfn_t store_gfn, xen_pfn_t console_gfn, void *data);
    void *data;
};

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, uint32_t store_domid,
                      unsigned int console_evtchn, unsigned long *console_mfn,
                      uint32_t console_domid, unsigned int hvm, unsigned int pae,
                      xc_migration_stream_t stream_type, struct restore_callbacks *callbacks,
                      int send_back_fd);
