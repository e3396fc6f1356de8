/*
 * fakexen: a user-space Xen under real libxc.
 *
 * An LD_PRELOAD library that stands in for the Linux privcmd device (open of
 * /proc/xen/privcmd or /dev/xen/privcmd, IOCTL_PRIVCMD_HYPERCALL, MMAPBATCH,
 * MMAPBATCH_V2, MMAP, RESTRICT; other ioctls ENOTTY, other Xen devices ENOENT)
 * and for the hypervisor behind it: one domain whose memory is a memfd that
 * foreign mappings alias.  It is compiled once per Xen release against that
 * release's public headers, because libxc checks the domctl/sysctl interface
 * versions and the structures change between releases.
 *
 * Environment (read at the first privcmd open):
 *   FAKEXEN_DOMID       the domain (default 7)
 *   FAKEXEN_HVM         1 for an HVM domain (default 0: PV)
 *   FAKEXEN_VCPUS       max vcpus (default 1)
 *   FAKEXEN_MAXPFN      guest frames backed (default 2^20)
 *   FAKEXEN_P2M_OFFSET  PV: mfn = pfn + OFFSET (default 0, identity); a
 *                       non-identity p2m makes pfn/mfn mix-ups in libxc show
 *   FAKEXEN_LENIENT     1: accept what real Xen refuses (set_ext_vcpucontext
 *                       with a vcpu out of range), with a warning in the log
 *   FAKEXEN_LOG         file: every hypercall (op, sub-op, result)
 *   FAKEXEN_DUMP        directory: at exit, the domain in xlpy's simulated-
 *                       domain layout (memory, vcpu<N>.ctx/.ext/.xsave,
 *                       shared_info, hvm_context) plus fakexen.json
 *   FAKEXEN_VARDIR      where /var/lib/xen/... paths go (4.x writes there)
 *
 * Exported for drivers: fakexen_suspend(), fakexen_resume(),
 * fakexen_mark_dirty(pfn) (the log-dirty bitmap a live save reads).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/types.h>

#define __XEN_TOOLS__ 1
#include <xen/xen.h>
#include <xen/domctl.h>
#include <xen/sysctl.h>
#include <xen/memory.h>
#include <xen/version.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/foreign/x86_32.h>

/* The privcmd ioctl ABI has been stable since Linux 2.6.18: declared here, so
 * every release's headers do. */
typedef struct { __u64 op; __u64 arg[5]; } fx_hypercall_t;
typedef struct { __u64 va; __u64 mfn; __u64 npages; } fx_mmap_entry_t;
typedef struct { int num; domid_t dom; fx_mmap_entry_t *entry; } fx_mmap_t;
typedef struct { int num; domid_t dom; __u64 addr; xen_pfn_t *arr; } fx_mmapbatch_t;
typedef struct { unsigned int num; domid_t dom; __u64 addr; const xen_pfn_t *arr; int *err; } fx_mmapbatch_v2_t;
#define FX_IOCTL_HYPERCALL    _IOC(_IOC_NONE, 'P', 0, sizeof(fx_hypercall_t))
#define FX_IOCTL_MMAP         _IOC(_IOC_NONE, 'P', 2, sizeof(fx_mmap_t))
#define FX_IOCTL_MMAPBATCH    _IOC(_IOC_NONE, 'P', 3, sizeof(fx_mmapbatch_t))
#define FX_IOCTL_MMAPBATCH_V2 _IOC(_IOC_NONE, 'P', 4, sizeof(fx_mmapbatch_v2_t))
#define FX_IOCTL_RESTRICT     _IOC(_IOC_NONE, 'P', 6, sizeof(domid_t))

#ifndef MEMOP_EXTENT_SHIFT
#define MEMOP_EXTENT_SHIFT 6
#endif
#define PAGE 4096UL
#define MAXFD 4096
#define MAXVCPU 64
#define NR_GNTTAB 4
#define EXT_SIZE 128            /* libxc copies 128 raw bytes into the domctl union */
#define XSAVE_HDR 16            /* xfeature_mask + size, as the dump keeps them */
#define MAXMAPS 8192

/* ------------------------------------------------------------ the domain */

/*
 * Backing "slots" of the memfd: [0, maxpfn) guest RAM by pfn, then the grant
 * table frames, the shared_info frame, the M2P table.  A PV frame number
 * (mfn) of slot s is s + p2m_offset; an HVM gfn goes through hvm_p2m.
 */
static struct {
    int inited, domid, hvm, nr_vcpus, lenient, suspended, logdirty;
    unsigned last_vcpu;         /* the last setvcpucontext: libxc sets ext state right after */
    unsigned long maxpfn, offset, populated;
    int memfd;
    uint32_t *hvm_p2m;          /* HVM gfn -> slot + 1, 0 = hole */
    unsigned char *present;     /* PV/HVM: pfn populated */
    uint32_t *ptype;            /* page types by slot (XEN_DOMCTL_PFINFO_*) */
    unsigned char *dirty;       /* log-dirty bitmap, 1 bit per pfn */
    uint64_t *m2p;              /* by mfn */
    unsigned long gnttab_gfn[NR_GNTTAB];
    unsigned address_size;
    uint64_t hvm_params[HVM_NR_PARAMS];
    unsigned char *hvm_ctx; uint32_t hvm_ctx_len;
    void *ctx[MAXVCPU]; size_t ctx_len[MAXVCPU];
    unsigned char *ext[MAXVCPU];
    unsigned char *xsave[MAXVCPU]; uint32_t xsave_len[MAXVCPU];
    uint64_t xfeature_mask[MAXVCPU];
    struct { uint32_t mode, khz, incarnation; uint64_t nsec; int set; } tsc;
    unsigned long calls, failed, warnings;
    FILE *log;
} D = { .domid = 7, .nr_vcpus = 1, .maxpfn = 1UL << 20, .memfd = -1, .address_size = 64 };

#define SLOT_GNTTAB (D.maxpfn)
#define SLOT_SHINFO (D.maxpfn + NR_GNTTAB)
#define SLOT_M2P (D.maxpfn + NR_GNTTAB + 1)
/* The M2P has an entry for every mfn, its own frames included. */
#define M2P_PAGES (((D.offset + SLOT_M2P) * 8 / (PAGE - 8) / 512 + 1) * 512)  /* whole 2 MiB chunks, as libxc maps them */
#define NR_SLOTS (SLOT_M2P + M2P_PAGES)
#define NR_MFNS (D.offset + NR_SLOTS)

static void say(const char *fmt, ...)
{
    va_list ap;
    if (!D.log) return;
    va_start(ap, fmt);
    vfprintf(D.log, fmt, ap);
    va_end(ap);
}

static void warn(const char *fmt, ...)
{
    va_list ap;
    D.warnings++;
    if (!D.log) return;
    fputs("WARNING ", D.log);
    va_start(ap, fmt);
    vfprintf(D.log, fmt, ap);
    va_end(ap);
}

static unsigned long envnum(const char *name, unsigned long dflt)
{
    const char *s = getenv(name);
    return s && *s ? strtoul(s, NULL, 0) : dflt;
}

static void *raw_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off)
{
    long r = syscall(SYS_mmap, a, n, prot, flags, fd, off);
    return (r < 0 && r > -4096) ? MAP_FAILED : (void *)r;
}

static void fx_init(void)
{
    const char *log;
    if (D.inited) return;
    D.inited = 1;
    D.domid = envnum("FAKEXEN_DOMID", 7);
    D.hvm = envnum("FAKEXEN_HVM", 0);
    D.nr_vcpus = envnum("FAKEXEN_VCPUS", 1);
    D.maxpfn = envnum("FAKEXEN_MAXPFN", 1UL << 20);
    D.offset = D.hvm ? 0 : envnum("FAKEXEN_P2M_OFFSET", 0);
    D.lenient = envnum("FAKEXEN_LENIENT", 0);
    if (D.nr_vcpus < 1 || D.nr_vcpus > MAXVCPU) D.nr_vcpus = 1;
    if ((log = getenv("FAKEXEN_LOG")) && *log) {
        static FILE *(*real_fopen)(const char *, const char *);
        real_fopen = dlsym(RTLD_NEXT, "fopen");
        D.log = real_fopen(log, "w");
        if (D.log) setvbuf(D.log, NULL, _IOLBF, 0);
    }
    D.memfd = syscall(SYS_memfd_create, "fakexen-domain", 0);
    if (D.memfd < 0 || ftruncate(D.memfd, NR_SLOTS * PAGE)) { perror("fakexen: memfd"); abort(); }
    D.hvm_p2m = calloc(D.maxpfn, sizeof(*D.hvm_p2m));
    D.present = calloc(D.maxpfn, 1);
    D.ptype = calloc(NR_SLOTS, sizeof(*D.ptype));
    D.dirty = calloc(D.maxpfn / 8 + 1, 1);
    D.m2p = raw_mmap(NULL, M2P_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, D.memfd, SLOT_M2P * PAGE);
    if (D.m2p == MAP_FAILED || !D.hvm_p2m || !D.present || !D.ptype || !D.dirty) abort();
    memset(D.m2p, 0xff, M2P_PAGES * PAGE);   /* INVALID_M2P_ENTRY */
    say("fakexen: domid=%d hvm=%d vcpus=%d maxpfn=%#lx p2m_offset=%#lx lenient=%d\n",
        D.domid, D.hvm, D.nr_vcpus, D.maxpfn, D.offset, D.lenient);
}

void fakexen_suspend(void) { D.suspended = 1; }
void fakexen_resume(void) { D.suspended = 0; }
void fakexen_mark_dirty(unsigned long pfn) { if (pfn < D.maxpfn) D.dirty[pfn / 8] |= 1 << (pfn % 8); }

/* The slot behind a guest frame: PV mfn, or HVM gfn; -1 when unmapped. */
static long slot_of_gfn(unsigned long gfn)
{
    if (D.hvm) return gfn < D.maxpfn && D.hvm_p2m[gfn] ? (long)D.hvm_p2m[gfn] - 1 : -1;
    if (gfn < D.offset) return -1;
    gfn -= D.offset;
    if (gfn < D.maxpfn) return D.present[gfn] ? (long)gfn : -1;
    return gfn < SLOT_M2P ? (long)gfn : -1;   /* grant table, shared_info */
}

static unsigned long mfn_of_slot(unsigned long slot) { return slot + D.offset; }

static void populate(unsigned long pfn)
{
    if (!D.present[pfn]) { D.present[pfn] = 1; D.populated++; }
    if (D.hvm) D.hvm_p2m[pfn] = pfn + 1;
    else D.m2p[mfn_of_slot(pfn)] = pfn;   /* as Xen's populate_physmap: set_gpfn_from_mfn */
}

static void depopulate(unsigned long pfn)
{
    if (D.present[pfn]) { D.present[pfn] = 0; D.populated--; }
    fallocate(D.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pfn * PAGE, PAGE);
    D.ptype[pfn] = 0;
    if (D.hvm) D.hvm_p2m[pfn] = 0;
    else D.m2p[mfn_of_slot(pfn)] = ~0ULL;
}

static unsigned char *slots_view(void)
{
    static unsigned char *view;
    if (!view) view = raw_mmap(NULL, NR_SLOTS * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, D.memfd, 0);
    return view == MAP_FAILED ? NULL : view;
}

/*
 * PV page types from a page-table walk at setvcpucontext, as Xen's type
 * validation gives them (x86_64 guests; Xen's own L4 slots 256-271 skipped).
 */
static void type_walk(unsigned long mfn, unsigned level)
{
    long slot = slot_of_gfn(mfn);
    uint64_t *pt;
    unsigned i;
    uint32_t want = (uint32_t)level << XEN_DOMCTL_PFINFO_LTAB_SHIFT;
    if (slot < 0 || (unsigned long)slot >= D.maxpfn || !level) return;
    if ((D.ptype[slot] & XEN_DOMCTL_PFINFO_LTABTYPE_MASK) == want) return;
    D.ptype[slot] = (D.ptype[slot] & XEN_DOMCTL_PFINFO_LPINTAB) | want;
    if (level == 1) return;
    pt = (uint64_t *)(slots_view() + slot * PAGE);
    for (i = 0; i < 512; i++) {
        if (level == 4 && i >= 256 && i < 272) continue;
        if (!(pt[i] & 1) || (level == 2 && (pt[i] & 0x80))) continue;
        type_walk((pt[i] & 0x000ffffffffff000ULL) >> 12, level - 1);
    }
}

/* ------------------------------------------------------------ hypercalls */

static const char *op_name(unsigned op)
{
    switch (op) {
    case __HYPERVISOR_mmu_update: return "mmu_update";
    case __HYPERVISOR_memory_op: return "memory_op";
    case __HYPERVISOR_multicall: return "multicall";
    case __HYPERVISOR_xen_version: return "xen_version";
    case __HYPERVISOR_grant_table_op: return "grant_table_op";
    case __HYPERVISOR_mmuext_op: return "mmuext_op";
    case __HYPERVISOR_sched_op: return "sched_op";
    case __HYPERVISOR_event_channel_op: return "event_channel_op";
    case __HYPERVISOR_hvm_op: return "hvm_op";
    case __HYPERVISOR_sysctl: return "sysctl";
    case __HYPERVISOR_domctl: return "domctl";
    default: return "other";
    }
}

static vcpu_guest_context_t *ctx_of(unsigned v) { return v < MAXVCPU ? D.ctx[v] : NULL; }

static long tsc_set(struct xen_domctl *d)
{
#if XEN_DOMCTL_INTERFACE_VERSION < 0xb
    xen_guest_tsc_info_t *t = &d->u.tsc_info.info;
#else
    struct xen_domctl_tsc_info *t = &d->u.tsc_info;
#endif
    D.tsc.mode = t->tsc_mode; D.tsc.khz = t->gtsc_khz;
    D.tsc.incarnation = t->incarnation; D.tsc.nsec = t->elapsed_nsec; D.tsc.set = 1;
    return 0;
}

static long tsc_get(struct xen_domctl *d)
{
#if XEN_DOMCTL_INTERFACE_VERSION < 0xb
    xen_guest_tsc_info_t info, *t = &info;
#else
    struct xen_domctl_tsc_info *t = &d->u.tsc_info;
#endif
    memset(t, 0, sizeof(*t));
    t->tsc_mode = D.tsc.mode; t->gtsc_khz = D.tsc.khz;
    t->incarnation = D.tsc.incarnation; t->elapsed_nsec = D.tsc.nsec;
#if XEN_DOMCTL_INTERFACE_VERSION < 0xb
    memcpy(d->u.tsc_info.out_info.p, t, sizeof(*t));
#endif
    return 0;
}

static long set_vcpu_context(struct xen_domctl *d)
{
    unsigned v = d->u.vcpucontext.vcpu;
    size_t n = D.address_size == 32 && !D.hvm ? sizeof(struct vcpu_guest_context_x86_32)
                                               : sizeof(vcpu_guest_context_t);
    vcpu_guest_context_t *c;
    if (v >= (unsigned)D.nr_vcpus) return -ESRCH;   /* Xen: vcpu >= d->max_vcpus */
    if (!d->u.vcpucontext.ctxt.p) return -EINVAL;   /* the reset form is not modelled */
    free(D.ctx[v]);
    D.ctx[v] = calloc(1, sizeof(vcpu_guest_context_t));
    memcpy(D.ctx[v], d->u.vcpucontext.ctxt.p, n);
    D.ctx_len[v] = n;
    c = D.ctx[v];
    D.last_vcpu = v;
    if (!D.hvm && D.address_size == 64) {
        type_walk(c->ctrlreg[3] >> 12, 4);
        if (c->ctrlreg[1] >> 12) type_walk(c->ctrlreg[1] >> 12, 4);
    }
    return 0;
}

static long set_ext_vcpu_context(struct xen_domctl *d)
{
    unsigned v = d->u.ext_vcpucontext.vcpu;
    if (v >= (unsigned)D.nr_vcpus) {
        /* Xen's arch_do_domctl (4.0 ... 4.17): evc->vcpu >= d->max_vcpus -> -ESRCH */
        warn("set_ext_vcpucontext vcpu=%u >= max_vcpus %d: real Xen returns -ESRCH%s\n", v,
             D.nr_vcpus, D.lenient ? " (lenient: kept for the vcpu whose context was set last)" : "");
        if (!D.lenient) return -ESRCH;
        v = D.last_vcpu;
    }
    if (!D.ext[v]) D.ext[v] = malloc(EXT_SIZE);
    memcpy(D.ext[v], &d->u, EXT_SIZE);
    return 0;
}

#ifdef XEN_DOMCTL_setvcpuextstate
static long domctl_vcpuextstate(struct xen_domctl *d, int set)
{
    unsigned v = d->u.vcpuextstate.vcpu;
    uint32_t n = d->u.vcpuextstate.size;
    if (v >= (unsigned)D.nr_vcpus) return -ESRCH;
    if (set) {
        free(D.xsave[v]);
        D.xsave[v] = malloc(n ? n : 1);
        memcpy(D.xsave[v], d->u.vcpuextstate.buffer.p, n);
        D.xsave_len[v] = n;
        D.xfeature_mask[v] = d->u.vcpuextstate.xfeature_mask;
        return 0;
    }
    if (!D.xsave[v]) { d->u.vcpuextstate.size = 0; d->u.vcpuextstate.xfeature_mask = 0; return 0; }
    if (!n) {   /* the size query */
        d->u.vcpuextstate.size = D.xsave_len[v];
        d->u.vcpuextstate.xfeature_mask = D.xfeature_mask[v];
        return 0;
    }
    if (n < D.xsave_len[v]) return -ENOBUFS;
    memcpy(d->u.vcpuextstate.buffer.p, D.xsave[v], D.xsave_len[v]);
    d->u.vcpuextstate.size = D.xsave_len[v];
    return 0;
}
#endif

static long shadow_op(struct xen_domctl_shadow_op *o)
{
    uint64_t i, n = o->pages < D.maxpfn ? o->pages : D.maxpfn;
    unsigned char *bm;
    switch (o->op) {
    case XEN_DOMCTL_SHADOW_OP_OFF: D.logdirty = 0; return 0;
    case XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY:
        if (D.logdirty) return -EINVAL;   /* as paging_log_dirty_enable: already on */
        D.logdirty = 1;
        memset(D.dirty, 0, D.maxpfn / 8 + 1);
        return 0;
    case XEN_DOMCTL_SHADOW_OP_CLEAN:
    case XEN_DOMCTL_SHADOW_OP_PEEK:
        if (!D.logdirty) return -EINVAL;
        bm = o->dirty_bitmap.p;
        o->stats.dirty_count = 0;
        o->stats.fault_count = 0;
        for (i = 0; i < n; i++)
            if (D.dirty[i / 8] & (1 << (i % 8))) o->stats.dirty_count++;
        if (bm) {
            memset(bm, 0, (o->pages + 7) / 8);
            memcpy(bm, D.dirty, (n + 7) / 8);
        }
        if (o->op == XEN_DOMCTL_SHADOW_OP_CLEAN) memset(D.dirty, 0, D.maxpfn / 8 + 1);
        o->pages = n;
        return 0;
    default:
        return -EINVAL;
    }
}

static long do_domctl(struct xen_domctl *d, unsigned *sub)
{
    *sub = d->cmd;
    if (d->interface_version != XEN_DOMCTL_INTERFACE_VERSION) return -EACCES;
    if (d->cmd != XEN_DOMCTL_getdomaininfo && d->domain != D.domid) return -ESRCH;
    switch (d->cmd) {
    case XEN_DOMCTL_getdomaininfo: {
        struct xen_domctl_getdomaininfo *i = &d->u.getdomaininfo;
        if (d->domain > D.domid) return -ESRCH;   /* "the first domain >= d->domain" */
        memset(i, 0, sizeof(*i));
        d->domain = D.domid;
        i->domain = D.domid;
        i->flags = (D.hvm ? XEN_DOMINF_hvm_guest : 0) | XEN_DOMINF_paused |
                   (D.suspended ? XEN_DOMINF_shutdown | (SHUTDOWN_suspend << XEN_DOMINF_shutdownshift) : 0);
        i->tot_pages = D.populated;
        i->max_pages = D.maxpfn;
        i->shared_info_frame = D.hvm ? SLOT_SHINFO : mfn_of_slot(SLOT_SHINFO);
        i->nr_online_vcpus = D.nr_vcpus;
        i->max_vcpu_id = D.nr_vcpus - 1;
        return 0;
    }
    case XEN_DOMCTL_sethvmcontext:
        free(D.hvm_ctx);
        D.hvm_ctx_len = d->u.hvmcontext.size;
        D.hvm_ctx = malloc(D.hvm_ctx_len ? D.hvm_ctx_len : 1);
        memcpy(D.hvm_ctx, d->u.hvmcontext.buffer.p, D.hvm_ctx_len);
        return 0;
    case XEN_DOMCTL_gethvmcontext:
        if (!d->u.hvmcontext.buffer.p) { d->u.hvmcontext.size = D.hvm_ctx_len; return 0; }
        if (d->u.hvmcontext.size < D.hvm_ctx_len) return -ENOSPC;
        memcpy(d->u.hvmcontext.buffer.p, D.hvm_ctx, D.hvm_ctx_len);
        d->u.hvmcontext.size = D.hvm_ctx_len;
        return 0;
    case XEN_DOMCTL_settscinfo: return tsc_set(d);
    case XEN_DOMCTL_gettscinfo: return tsc_get(d);
    case XEN_DOMCTL_shadow_op: return shadow_op(&d->u.shadow_op);
#ifdef XEN_DOMCTL_getpageframeinfo3
    case XEN_DOMCTL_getpageframeinfo3: {
        xen_pfn_t *a = d->u.getpageframeinfo3.array.p;
        uint64_t i;
        for (i = 0; i < d->u.getpageframeinfo3.num; i++) {
            long s = slot_of_gfn(a[i]);
            /* as Xen: each entry is replaced by the frame's type alone */
            a[i] = s < 0 || (unsigned long)s >= D.maxpfn ? XEN_DOMCTL_PFINFO_XTAB
                   : D.hvm ? XEN_DOMCTL_PFINFO_NOTAB : D.ptype[s];
        }
        return 0;
    }
#endif
    case XEN_DOMCTL_getvcpuinfo: {
        struct xen_domctl_getvcpuinfo *v = &d->u.getvcpuinfo;
        if (v->vcpu >= (unsigned)D.nr_vcpus) return -ESRCH;
        v->online = 1; v->blocked = 0; v->running = 0; v->cpu_time = 0; v->cpu = 0;
        return 0;
    }
    case XEN_DOMCTL_setvcpucontext: return set_vcpu_context(d);
    case XEN_DOMCTL_getvcpucontext: {
        unsigned v = d->u.vcpucontext.vcpu;
        if (v >= (unsigned)D.nr_vcpus) return -ESRCH;
        if (!ctx_of(v)) memset(d->u.vcpucontext.ctxt.p, 0, sizeof(vcpu_guest_context_t));
        else memcpy(d->u.vcpucontext.ctxt.p, D.ctx[v], D.ctx_len[v]);
        return 0;
    }
    case XEN_DOMCTL_set_ext_vcpucontext: return set_ext_vcpu_context(d);
    case XEN_DOMCTL_get_ext_vcpucontext: {
        unsigned v = d->u.ext_vcpucontext.vcpu;
        if (v >= (unsigned)D.nr_vcpus) return -ESRCH;
        if (D.ext[v]) memcpy(&d->u, D.ext[v], EXT_SIZE);
        else memset(&d->u, 0, EXT_SIZE);
        d->u.ext_vcpucontext.vcpu = v;
        d->u.ext_vcpucontext.size = sizeof(d->u.ext_vcpucontext);   /* Xen: evc->size = sizeof(*evc) */
        return 0;
    }
#ifdef XEN_DOMCTL_setvcpuextstate
    case XEN_DOMCTL_setvcpuextstate: return domctl_vcpuextstate(d, 1);
    case XEN_DOMCTL_getvcpuextstate: return domctl_vcpuextstate(d, 0);
#endif
#ifdef XEN_DOMCTL_get_vcpu_msrs
    case XEN_DOMCTL_get_vcpu_msrs:
        d->u.vcpu_msrs.msr_count = 0;   /* the fake vcpus carry no MSRs */
        return 0;
    case XEN_DOMCTL_set_vcpu_msrs:
        return d->u.vcpu_msrs.msr_count ? -EINVAL : 0;
#endif
#ifdef XEN_DOMCTL_get_cpu_policy
    case XEN_DOMCTL_get_cpu_policy:
        d->u.cpu_policy.nr_leaves = 0;
        d->u.cpu_policy.nr_msrs = 0;
        return 0;
    case XEN_DOMCTL_set_cpu_policy:
        return 0;
#endif
    case XEN_DOMCTL_set_address_size:
        if (d->u.address_size.size != 32 && d->u.address_size.size != 64) return -EINVAL;
        D.address_size = d->u.address_size.size;
        return 0;
    case XEN_DOMCTL_get_address_size:
        d->u.address_size.size = D.hvm ? 64 : D.address_size;
        return 0;
#ifdef XEN_DOMCTL_cacheflush
    case XEN_DOMCTL_cacheflush:
#endif
#ifdef XEN_DOMCTL_set_cpuid
    case XEN_DOMCTL_set_cpuid:
#endif
    case XEN_DOMCTL_max_mem:
    case XEN_DOMCTL_pausedomain:
    case XEN_DOMCTL_unpausedomain:
    case XEN_DOMCTL_destroydomain:
        return 0;
    default:
        return -ENOSYS;
    }
}

static long do_memory_op(unsigned long cmd, void *arg, unsigned *sub)
{
    unsigned op = cmd & ((1UL << MEMOP_EXTENT_SHIFT) - 1);
    unsigned long start = cmd >> MEMOP_EXTENT_SHIFT;
    *sub = op;
    switch (op) {
    case XENMEM_populate_physmap:
    case XENMEM_decrease_reservation: {
        struct xen_memory_reservation *r = arg;
        xen_pfn_t *ext = r->extent_start.p;
        unsigned long i, j, n = 1UL << r->extent_order;
        for (i = start; i < r->nr_extents; i++) {
            unsigned long pfn = ext[i];
            if (op == XENMEM_decrease_reservation) {
                /* PV names mfns here, HVM gfns */
                long s = slot_of_gfn(pfn);
                if (s < 0 || (unsigned long)s + n > D.maxpfn) return i;
                for (j = 0; j < n; j++) depopulate(s + j);
                continue;
            }
            if (pfn + n > D.maxpfn) return i;
            for (j = 0; j < n; j++) populate(pfn + j);
            if (!D.hvm) ext[i] = mfn_of_slot(pfn);   /* Xen writes the mfn back for PV */
        }
        return r->nr_extents;
    }
    case XENMEM_maximum_gpfn: {
        long i;
        for (i = D.maxpfn - 1; i > 0 && !D.present[i]; i--) ;
        return i;
    }
    case XENMEM_maximum_ram_page: return NR_MFNS;
    case XENMEM_current_reservation: return D.populated;
    case XENMEM_maximum_reservation: return D.maxpfn;
    case XENMEM_machphys_mfn_list: {
        struct xen_machphys_mfn_list *l = arg;
        unsigned i, n = (M2P_PAGES + 511) / 512;
        if (n > l->max_extents) n = l->max_extents;
        for (i = 0; i < n; i++) l->extent_start.p[i] = mfn_of_slot(SLOT_M2P) + i * 512;
        l->nr_extents = n;
        return 0;
    }
#ifdef XENMEM_machphys_compat_mfn_list
    case XENMEM_machphys_compat_mfn_list: {
        /* 4.6+ PV restore asks for the compat M2P's first frame only (it compares it
         * with 32-bit guests' L4 slots); no compat table is modelled: the M2P's frame */
        struct xen_machphys_mfn_list *l = arg;
        if (!l->max_extents) return -EINVAL;
        l->extent_start.p[0] = mfn_of_slot(SLOT_M2P);
        l->nr_extents = 1;
        return 0;
    }
#endif
    case XENMEM_add_to_physmap: {
        struct xen_add_to_physmap *a = arg;
        if (!D.hvm || a->gpfn >= D.maxpfn) return -EINVAL;
        if (a->space == XENMAPSPACE_grant_table && a->idx < NR_GNTTAB) {
            D.hvm_p2m[a->gpfn] = SLOT_GNTTAB + a->idx + 1;
            D.gnttab_gfn[a->idx] = a->gpfn;
            return 0;
        }
        if (a->space == XENMAPSPACE_shared_info) { D.hvm_p2m[a->gpfn] = SLOT_SHINFO + 1; return 0; }
        return -ENOSYS;
    }
#ifdef XENMEM_remove_from_physmap
    case XENMEM_remove_from_physmap: {
        struct xen_remove_from_physmap *r = arg;
        if (!D.hvm || r->gpfn >= D.maxpfn) return -EINVAL;
        if (D.hvm_p2m[r->gpfn] > D.maxpfn) D.hvm_p2m[r->gpfn] = 0;   /* a mapped-in frame */
        else depopulate(r->gpfn);
        return 0;
    }
#endif
    default:
        return -ENOSYS;
    }
}

static long do_hvm_op(unsigned long op, void *arg, unsigned *sub)
{
    struct xen_hvm_param *p = arg;
    *sub = op;
    if (op != HVMOP_set_param && op != HVMOP_get_param) return -ENOSYS;
    if (!D.hvm) return -EINVAL;
    if (p->index >= HVM_NR_PARAMS) return -EINVAL;
    if (op == HVMOP_get_param) { p->value = D.hvm_params[p->index]; return 0; }
    D.hvm_params[p->index] = p->value;
#if defined(HVM_PARAM_VM86_TSS_SIZED) && defined(HVM_PARAM_VM86_TSS)
    /* Xen's hvmop_set_param: the old VM86_TSS is the sized one with a 128-byte TSS */
    if (p->index == HVM_PARAM_VM86_TSS)
        D.hvm_params[HVM_PARAM_VM86_TSS_SIZED] = ((uint64_t)128 << 32) | (uint32_t)p->value;
#endif
    return 0;
}

static long do_mmuext_op(struct mmuext_op *ops, unsigned count, unsigned *done, unsigned *sub)
{
    unsigned i;
    for (i = 0; i < count; i++) {
        long s = slot_of_gfn(ops[i].arg1.mfn);
        uint32_t t;
        *sub = ops[i].cmd;
        switch (ops[i].cmd) {
        case MMUEXT_PIN_L1_TABLE: t = XEN_DOMCTL_PFINFO_L1TAB; break;
        case MMUEXT_PIN_L2_TABLE: t = XEN_DOMCTL_PFINFO_L2TAB; break;
        case MMUEXT_PIN_L3_TABLE: t = XEN_DOMCTL_PFINFO_L3TAB; break;
        case MMUEXT_PIN_L4_TABLE: t = XEN_DOMCTL_PFINFO_L4TAB; break;
        case MMUEXT_UNPIN_TABLE: t = 0; break;
        default: continue;
        }
        if (s < 0 || (unsigned long)s >= D.maxpfn) return -EINVAL;
        D.ptype[s] = t ? t | XEN_DOMCTL_PFINFO_LPINTAB : 0;
    }
    if (done) *done = count;
    return 0;
}

static long do_mmu_update(struct mmu_update *req, unsigned count, unsigned *done, unsigned *sub)
{
    unsigned i;
    for (i = 0; i < count; i++) {
        unsigned long mfn = req[i].ptr >> 12;
        *sub = req[i].ptr & 7;
        if (*sub != MMU_MACHPHYS_UPDATE) return -ENOSYS;   /* no guest page-table writes */
        if (slot_of_gfn(mfn) < 0) return -EINVAL;
        D.m2p[mfn] = req[i].val;
    }
    if (done) *done = count;
    return 0;
}

static long do_xen_version(int cmd, void *arg, unsigned *sub)
{
    *sub = cmd;
    switch (cmd) {
    case XENVER_version: return (4 << 16) | 0;
    case XENVER_capabilities: strcpy(arg, "xen-3.0-x86_64 xen-3.0-x86_32p hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"); return 0;
    case XENVER_pagesize: return PAGE;
    case XENVER_platform_parameters:
        ((xen_platform_parameters_t *)arg)->virt_start = 0xffff800000000000UL;
        return 0;
    case XENVER_extraversion: strcpy(arg, "-fakexen"); return 0;
    default: return -ENOSYS;
    }
}

static long do_grant_table_op(unsigned cmd, void *uop, unsigned *sub)
{
    *sub = cmd;
    if (cmd == GNTTABOP_setup_table) {
        struct gnttab_setup_table *t = uop;
        unsigned i;
        if (t->nr_frames > NR_GNTTAB) { t->status = GNTST_general_error; return 0; }
        for (i = 0; i < t->nr_frames; i++)
            t->frame_list.p[i] = D.hvm ? D.gnttab_gfn[i] : mfn_of_slot(SLOT_GNTTAB + i);
        t->status = GNTST_okay;
        return 0;
    }
    if (cmd == GNTTABOP_query_size) {
        struct gnttab_query_size *q = uop;
        q->nr_frames = 1; q->max_nr_frames = NR_GNTTAB; q->status = GNTST_okay;
        return 0;
    }
    return -ENOSYS;
}

static long do_sysctl(struct xen_sysctl *c, unsigned *sub)
{
    *sub = c->cmd;
    if (c->interface_version != XEN_SYSCTL_INTERFACE_VERSION) return -EACCES;
#ifdef XEN_SYSCTL_get_cpu_policy
    if (c->cmd == XEN_SYSCTL_get_cpu_policy) {
        /* the maxima size the caller's buffers; the fake's policies are empty */
        c->u.cpu_policy.nr_leaves = c->u.cpu_policy.leaves.p ? 0 : 256;
        c->u.cpu_policy.nr_msrs = c->u.cpu_policy.msrs.p ? 0 : 16;
        return 0;
    }
#endif
    return -ENOSYS;
}

static long hypercall(fx_hypercall_t *h);

static long do_multicall(multicall_entry_t *calls, unsigned n)
{
    unsigned i, j;
    for (i = 0; i < n; i++) {
        fx_hypercall_t h = { .op = calls[i].op };
        for (j = 0; j < 5; j++) h.arg[j] = calls[i].args[j];
        calls[i].result = hypercall(&h);
    }
    return 0;
}

static long hypercall(fx_hypercall_t *h)
{
    long ret;
    unsigned sub = 0;
    void *a0 = (void *)(uintptr_t)h->arg[0], *a1 = (void *)(uintptr_t)h->arg[1];
    switch (h->op) {
    case __HYPERVISOR_domctl: ret = do_domctl(a0, &sub); break;
    case __HYPERVISOR_sysctl: ret = do_sysctl(a0, &sub); break;
    case __HYPERVISOR_memory_op: ret = do_memory_op(h->arg[0], a1, &sub); break;
    case __HYPERVISOR_hvm_op: ret = do_hvm_op(h->arg[0], a1, &sub); break;
    case __HYPERVISOR_mmuext_op: ret = do_mmuext_op(a0, h->arg[1], (void *)(uintptr_t)h->arg[2], &sub); break;
    case __HYPERVISOR_mmu_update: ret = do_mmu_update(a0, h->arg[1], (void *)(uintptr_t)h->arg[2], &sub); break;
    case __HYPERVISOR_xen_version: ret = do_xen_version(h->arg[0], a1, &sub); break;
    case __HYPERVISOR_grant_table_op: ret = do_grant_table_op(h->arg[0], a1, &sub); break;
    case __HYPERVISOR_multicall: ret = do_multicall(a0, h->arg[1]); break;
    default: ret = -ENOSYS;
    }
    D.calls++;
    if (ret < 0) D.failed++;
    say("hypercall %s(%llu) sub=%u -> %ld\n", op_name(h->op), (unsigned long long)h->op, sub, ret);
    return ret;
}

/* ----------------------------------------------------- the privcmd device */

static unsigned char fdkind[MAXFD];
static struct { unsigned long va, len; int prot; } maps[MAXMAPS];

static int prot_at(unsigned long va)
{
    int i;
    for (i = 0; i < MAXMAPS; i++)
        if (maps[i].len && va >= maps[i].va && va < maps[i].va + maps[i].len) return maps[i].prot;
    return PROT_READ | PROT_WRITE;
}

/* Overlay one page of a privcmd mapping with the frame's backing slot. */
static int map_frame(unsigned long va, unsigned long frame, unsigned dom)
{
    long s;
    if (dom == DOMID_XEN) {   /* the M2P table (xc_get_m2p_mfns users) */
        s = frame >= mfn_of_slot(SLOT_M2P) && frame < mfn_of_slot(NR_SLOTS) ? (long)(frame - D.offset) : -1;
    } else {
        if (dom != (unsigned)D.domid) return -ESRCH;
        s = slot_of_gfn(frame);
    }
    if (s < 0) return -EINVAL;
    if (raw_mmap((void *)va, PAGE, prot_at(va), MAP_SHARED | MAP_FIXED, D.memfd, s * PAGE) == MAP_FAILED)
        return -errno;
    return 0;
}

static int privcmd_ioctl(unsigned long req, void *arg)
{
    long ret = 0;
    if (req == FX_IOCTL_HYPERCALL) {
        ret = hypercall(arg);
    } else if (req == FX_IOCTL_MMAPBATCH_V2) {
        fx_mmapbatch_v2_t *b = arg;
        unsigned i;
        /* as Linux: per-frame errors in err[], the call fails only for paged-out
         * frames (-ENOENT), which this domain never has */
        for (i = 0; i < b->num; i++)
            b->err[i] = map_frame(b->addr + i * PAGE, b->arr[i], b->dom);
        say("ioctl MMAPBATCH_V2 dom=%u num=%u -> %ld\n", b->dom, b->num, ret);
    } else if (req == FX_IOCTL_MMAPBATCH) {
        fx_mmapbatch_t *b = arg;
        int i;
        for (i = 0; i < b->num; i++)   /* v1 reports a failed frame in its top nibble */
            if (map_frame(b->addr + i * PAGE, b->arr[i], b->dom)) b->arr[i] |= 0xf0000000U;
        say("ioctl MMAPBATCH dom=%u num=%d\n", b->dom, b->num);
    } else if (req == FX_IOCTL_MMAP) {
        fx_mmap_t *m = arg;
        int i;
        unsigned long j;
        for (i = 0; i < m->num && !ret; i++)
            for (j = 0; j < m->entry[i].npages && !ret; j++)
                ret = map_frame(m->entry[i].va + j * PAGE, m->entry[i].mfn + j, m->dom);
        say("ioctl MMAP dom=%u num=%d -> %ld\n", m->dom, m->num, ret);
    } else if (req == FX_IOCTL_RESTRICT) {
        say("ioctl RESTRICT\n");
    } else {
        say("ioctl %#lx -> ENOTTY\n", req);
        ret = -ENOTTY;
    }
    if (ret < 0) { errno = -ret; return -1; }
    return ret;
}

static int is_privcmd(const char *p)
{
    return p && (!strcmp(p, "/proc/xen/privcmd") || !strcmp(p, "/dev/xen/privcmd"));
}

static int is_other_xen(const char *p)
{
    return p && (!strncmp(p, "/dev/xen/", 9) || !strncmp(p, "/proc/xen/", 10));
}

static const char *redirect(const char *path, char *buf, size_t n)
{
    const char *v = getenv("FAKEXEN_VARDIR");
    if (v && path && !strncmp(path, "/var/lib/xen/", 13)) {
        snprintf(buf, n, "%s/%s", v, path + 13);
        return buf;
    }
    return path;
}

static int open_fake(const char *path)
{
    int fd;
    fx_init();
    if (!is_privcmd(path)) { say("open %s -> ENOENT\n", path); errno = ENOENT; return -1; }
    fd = syscall(SYS_memfd_create, "fakexen-privcmd", MFD_CLOEXEC);
    if (fd >= 0 && fd < MAXFD) fdkind[fd] = 1;
    say("open %s -> fd %d\n", path, fd);
    return fd;
}

static int open_at(int dirfd, const char *path, int flags, mode_t mode)
{
    char buf[4096];
    if (is_privcmd(path) || is_other_xen(path)) return open_fake(path);
    return syscall(SYS_openat, dirfd, redirect(path, buf, sizeof buf), flags, mode);
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags) return open_at(AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags) return open_at(AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags) return open_at(dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags) return open_at(dirfd, path, flags, mode); }
int __open_2(const char *path, int flags) { return open_at(AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return open_at(AT_FDCWD, path, flags, 0); }

FILE *fopen(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    char buf[4096];
    if (!real) real = dlsym(RTLD_NEXT, "fopen");
    if (is_privcmd(path) || is_other_xen(path)) { errno = ENOENT; return NULL; }
    return real(redirect(path, buf, sizeof buf), mode);
}
FILE *fopen64(const char *path, const char *mode) { return fopen(path, mode); }

int close(int fd)
{
    if (fd >= 0 && fd < MAXFD) fdkind[fd] = 0;
    return syscall(SYS_close, fd);
}

int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    void *arg;
    long r;
    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (fd >= 0 && fd < MAXFD && fdkind[fd]) return privcmd_ioctl(req, arg);
    r = syscall(SYS_ioctl, fd, req, arg);
    if (r < 0) { errno = -r; return -1; }
    return r;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p;
    int i;
    if (!(fd >= 0 && fd < MAXFD && fdkind[fd])) {
        p = raw_mmap(addr, len, prot, flags, fd, off);
        if (p == MAP_FAILED) errno = errno ? errno : ENOMEM;
        return p;
    }
    /* address space only: the MMAPBATCH that follows overlays the frames */
    p = raw_mmap(addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | (flags & MAP_FIXED), -1, 0);
    if (p == MAP_FAILED) return p;
    for (i = 0; i < MAXMAPS; i++)
        if (!maps[i].len || maps[i].va == (unsigned long)p) {
            maps[i].va = (unsigned long)p; maps[i].len = len; maps[i].prot = prot;
            break;
        }
    return p;
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) { return mmap(addr, len, prot, flags, fd, off); }

int munmap(void *addr, size_t len)
{
    int i;
    long r;
    for (i = 0; i < MAXMAPS; i++)
        if (maps[i].len && maps[i].va == (unsigned long)addr) maps[i].len = 0;
    r = syscall(SYS_munmap, addr, len);
    if (r < 0) { errno = -r; return -1; }
    return 0;
}

/* -------------------------------------------------------------- the dump */

static int write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[4096];
    int fd;
    const char *c = p;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k <= 0) { syscall(SYS_close, fd); return -1; }
        c += k; n -= k;
    }
    return syscall(SYS_close, fd);
}

/* The frame number of a canonical dump: an mfn back to its pfn (M2P). */
static uint64_t canon(uint64_t mfn) { return mfn < NR_MFNS && D.m2p[mfn] != ~0ULL ? D.m2p[mfn] : mfn; }

/*
 * PV with a non-identity p2m: page-table entries and vcpu frame numbers hold
 * mfns; the dump gives pfns (as a save would canonicalise them), so it
 * compares with a stream's pages.  x86_64 page tables only.
 */
static void canonicalise_page(uint64_t *pt, uint32_t type)
{
    unsigned i;
    if (!D.offset || !(type & XEN_DOMCTL_PFINFO_LTABTYPE_MASK) || D.address_size != 64) return;
    for (i = 0; i < 512; i++)
        if (pt[i] & 1)
            pt[i] = (pt[i] & ~0x000ffffffffff000ULL) | (canon((pt[i] & 0x000ffffffffff000ULL) >> 12) << 12);
}

static void canonicalise_ctx(vcpu_guest_context_t *c, unsigned vcpu)
{
    unsigned i;
    if (!D.offset || D.hvm || D.address_size != 64) return;
    if (vcpu == 0) c->user_regs.rdx = canon(c->user_regs.rdx);   /* the start_info mfn */
    c->ctrlreg[3] = canon(c->ctrlreg[3] >> 12) << 12 | (c->ctrlreg[3] & 0xfff);
    if (c->ctrlreg[1] >> 12) c->ctrlreg[1] = canon(c->ctrlreg[1] >> 12) << 12 | (c->ctrlreg[1] & 0xfff);
    for (i = 0; i < c->gdt_ents / 512 + 1 && i < 16; i++) c->gdt_frames[i] = canon(c->gdt_frames[i]);
}

static void dump(const char *dir)
{
    unsigned char *view = slots_view(), page[PAGE];
    char name[64], path[4096];
    unsigned long pfn, top = 0, i;
    unsigned v;
    int fd;
    FILE *j;
    static FILE *(*real_fopen)(const char *, const char *);
    if (!view) return;
    mkdir(dir, 0755);
    for (pfn = 0; pfn < D.maxpfn; pfn++) if (D.present[pfn] || (D.hvm && D.hvm_p2m[pfn])) top = pfn + 1;
    snprintf(path, sizeof path, "%s/memory", dir);
    fd = syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (ftruncate(fd, top * PAGE)) { syscall(SYS_close, fd); return; }
    for (pfn = 0; pfn < top; pfn++) {
        /* sparse, as the sim's: holes and zero pages stay holes */
        long s = D.hvm ? (D.hvm_p2m[pfn] ? (long)D.hvm_p2m[pfn] - 1 : -1) : (D.present[pfn] ? (long)pfn : -1);
        static const unsigned char zero[PAGE];
        if (s < 0) continue;
        memcpy(page, view + s * PAGE, PAGE);
        if (!D.hvm) canonicalise_page((uint64_t *)page, D.ptype[pfn]);
        if (memcmp(page, zero, PAGE) && pwrite(fd, page, PAGE, pfn * PAGE) != (ssize_t)PAGE) break;
    }
    syscall(SYS_close, fd);
    for (v = 0; v < MAXVCPU; v++) {
        if (D.ctx[v]) {
            vcpu_guest_context_t c;
            memcpy(&c, D.ctx[v], sizeof c);
            if (D.ctx_len[v] == sizeof c) canonicalise_ctx(&c, v);
            snprintf(name, sizeof name, "vcpu%u.ctx", v);
            write_file(dir, name, &c, D.ctx_len[v]);
        }
        if (D.ext[v]) { snprintf(name, sizeof name, "vcpu%u.ext", v); write_file(dir, name, D.ext[v], EXT_SIZE); }
        if (D.xsave[v]) {
            snprintf(name, sizeof name, "vcpu%u.xsave", v);
            write_file(dir, name, D.xsave[v], D.xsave_len[v]);
        }
    }
    if (D.hvm) {
        if (D.hvm_ctx) write_file(dir, "hvm_context", D.hvm_ctx, D.hvm_ctx_len);
    } else {
        write_file(dir, "shared_info", view + SLOT_SHINFO * PAGE, PAGE);
    }
    write_file(dir, "grant_table", view + SLOT_GNTTAB * PAGE, PAGE);
    if (!real_fopen) real_fopen = dlsym(RTLD_NEXT, "fopen");
    snprintf(path, sizeof path, "%s/fakexen.json", dir);
    if (!(j = real_fopen(path, "w"))) return;
    fprintf(j, "{\n  \"guest\": \"%s\",\n  \"domid\": %d,\n  \"p2m_offset\": %lu,\n", D.hvm ? "hvm" : "pv", D.domid, D.offset);
    fprintf(j, "  \"pages\": %lu,\n  \"populated\": %lu,\n  \"address_size\": %u,\n", top, D.populated, D.address_size);
    fprintf(j, "  \"vcpus\": [");
    for (v = 0, i = 0; v < MAXVCPU; v++) if (D.ctx[v]) fprintf(j, "%s%u", i++ ? ", " : "", v);
    fprintf(j, "],\n  \"hvm_params\": {");
    for (v = 0, i = 0; v < HVM_NR_PARAMS; v++)
        if (D.hvm_params[v]) fprintf(j, "%s\"%u\": %llu", i++ ? ", " : "", v, (unsigned long long)D.hvm_params[v]);
    fprintf(j, "},\n  \"tsc_info\": ");
    if (D.tsc.set)
        fprintf(j, "{\"mode\": %u, \"khz\": %u, \"incarnation\": %u, \"nsec\": %llu}", D.tsc.mode, D.tsc.khz,
                D.tsc.incarnation, (unsigned long long)D.tsc.nsec);
    else fprintf(j, "null");
    fprintf(j, ",\n  \"page_types\": {");
    for (pfn = 0, i = 0; pfn < top; pfn++)
        if (D.ptype[pfn]) fprintf(j, "%s\"%lu\": %u", i++ ? ", " : "", pfn, D.ptype[pfn]);
    fprintf(j, "},\n  \"hypercalls\": %lu,\n  \"failed_hypercalls\": %lu,\n  \"warnings\": %lu\n}\n",
            D.calls, D.failed, D.warnings);
    fclose(j);
}

__attribute__((destructor)) static void fx_fini(void)
{
    const char *dir = getenv("FAKEXEN_DUMP");
    if (!D.inited) return;
    say("fakexen: %lu hypercalls, %lu failed, %lu warnings, %lu pages populated\n",
        D.calls, D.failed, D.warnings, D.populated);
    if (dir && *dir) dump(dir);
    if (D.log) fclose(D.log);
}
