/*
 * Xen 4.1 (soname libxenguest.so.4.0, sic): xc_interface handles, no
 * restore_callbacks, no stream-type argument (a Remus receiver is told only by
 * the stream; the R-bug receiver of legacy-stream.md section 0).
 *
 * Source: RELEASE-4.1.0 tools/libxc/xenguest.h:76-79.
 */

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, unsigned int console_evtchn,
                      unsigned long *console_mfn, unsigned int hvm, unsigned int pae,
                      int superpages);
