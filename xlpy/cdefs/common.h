/*
 * Declarations shared by every libxc from Xen 4.1 to 4.22: the xc_interface
 * handle, last-error reporting and the xentoollog stdio logger.  Loaded first,
 * before the generation file.  (Xen 4.0 predates all of this; see 4.0.h.)
 *
 * Source: RELEASE-4.17.0 tools/include/xenctrl.h:117-183,1660-1690 and
 * tools/include/xentoollog.h:30-86; unchanged in shape since 4.1.
 */

typedef enum xentoollog_level {
    XTL_NONE,
    XTL_DEBUG,
    XTL_VERBOSE,
    XTL_DETAIL,
    XTL_PROGRESS,
    XTL_INFO,
    XTL_NOTICE,
    XTL_WARN,
    XTL_ERROR,
    XTL_CRITICAL,
    XTL_NUM_LEVELS
} xentoollog_level;

typedef struct xentoollog_logger xentoollog_logger;
typedef struct xentoollog_logger_stdiostream xentoollog_logger_stdiostream;

xentoollog_logger_stdiostream *xtl_createlogger_stdiostream(FILE *f, xentoollog_level min_level,
                                                            unsigned flags);
void xtl_logger_destroy(struct xentoollog_logger *logger);

typedef struct xc_interface_core xc_interface;

enum xc_error_code {
    XC_ERROR_NONE = 0,
    XC_INTERNAL_ERROR = 1,
    XC_INVALID_KERNEL = 2,
    XC_INVALID_PARAM = 3,
    XC_OUT_OF_MEMORY = 4
};
typedef enum xc_error_code xc_error_code;

#define XC_MAX_ERROR_MSG_LEN 1024
typedef struct xc_error {
    enum xc_error_code code;
    char message[1024];
} xc_error;

/* XC_OPENFLAG_DUMMY gives a handle that crashes on the first hypercall: only
   for probing libxenguest's argument asserts, which run before any. */
enum xc_open_flags {
    XC_OPENFLAG_DUMMY = 1
};

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags);
int xc_interface_close(xc_interface *xch);
const xc_error *xc_get_last_error(xc_interface *handle);
void xc_clear_last_error(xc_interface *xch);
