/*
 * Xen 4.22: the 4.14 prototype plus a trailing `unsigned int memflags`
 * (a76278016e).  Calling this library with the 4.14-4.21 declaration would
 * pass stack garbage as memflags.
 *
 * Source: RELEASE-4.22.0 tools/include/xenguest.h:521,545-595,621-627.
 */

typedef unsigned long xen_pfn_t;

typedef enum {
    XC_STREAM_PLAIN,
    XC_STREAM_REMUS,
    XC_STREAM_COLO
} xc_stream_type_t;

#define XGR_SDD_MISSING_CPUID 1
#define XGR_SDD_MISSING_MSR 2
#define XGR_CHECKPOINT_ERROR 0
#define XGR_CHECKPOINT_SUCCESS 1
#define XGR_CHECKPOINT_FAILOVER 2

struct restore_callbacks {
    int (*static_data_done)(unsigned int missing, void *data);
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
                      uint32_t console_domid, xc_stream_type_t stream_type,
                      struct restore_callbacks *callbacks, int send_back_fd,
                      unsigned int memflags);
