/*
 * failinject: an LD_PRELOAD shim that makes calls of one function fail, to
 * drive the worker through its failure paths (bench/failinject sweeps it).
 *
 *   ADL_FI_FUNC   malloc | calloc | realloc | curl_multi_add_handle |
 *                 curl_easy_init | PQsendQueryParams | PQsendQuery
 *   ADL_FI_N      the call that fails (1: the first), counted from the
 *                 start signal; 0 (the default) fails nothing, only counts
 *   ADL_FI_TIMES  how many calls fail from the Nth on (1)
 *   ADL_FI_START  counting starts after the first PQsendQueryParams or
 *                 PQsendQuery whose SQL contains this ("async_dl_claim":
 *                 the first claim, so that start-up succeeds); "" counts
 *                 from the start
 *   ADL_FI_LOG    a file the shim appends to: a line and the call's stack
 *                 for every call it fails, and at exit the number of calls
 *                 counted ("failinject: <func> counted <n> failed <f>")
 *
 * Failing is what each function does when it cannot: NULL from malloc,
 * calloc, realloc and curl_easy_init, CURLM_OUT_OF_MEMORY from
 * curl_multi_add_handle, 0 from PQsendQueryParams and PQsendQuery.  Only
 * the main thread's calls are counted (not a resolver thread's), so that N
 * names the same call from run to run as far as the event loop allows.
 *
 * The shim allocates nothing and is not instrumented.  Under ASan its
 * malloc must come before the ASan runtime in symbol lookup, yet ASan
 * wants its runtime loaded first: LD_PRELOAD="failinject.so libasan.so"
 * with ASAN_OPTIONS=verify_asan_link_order=0; the shim's malloc then calls
 * ASan's (RTLD_NEXT).  For the other functions the order does not matter.
 *
 *   cc -shared -fPIC -O1 -g -fno-omit-frame-pointer -o failinject.so \
 *       failinject.c -ldl
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>


enum {
    FI_NONE = 0,
    FI_MALLOC,
    FI_CALLOC,
    FI_REALLOC,
    FI_MULTI_ADD,
    FI_EASY_INIT,
    FI_SEND_PARAMS,
    FI_SEND_QUERY
};

static const char  *fi_names[] = {
    "", "malloc", "calloc", "realloc", "curl_multi_add_handle",
    "curl_easy_init", "PQsendQueryParams", "PQsendQuery"
};

static volatile int fi_inited;
static int          fi_func;
static long         fi_n;
static long         fi_times = 1;
static const char  *fi_start;
static int          fi_started;
static long         fi_count;
static long         fi_failed;
static int          fi_log = -1;

/* inside the shim (dlsym, backtrace): calls pass straight through */
static volatile int  fi_busy;
/* 0: not known yet, 1: the main thread, 2: another */
static __thread int  fi_thread __attribute__((tls_model("initial-exec")));


/* allocations made while dlsym() looks up the real malloc and calloc */

static char    fi_arena[64 * 1024] __attribute__((aligned(16)));
static size_t  fi_arena_used;

static void *
fi_arena_alloc(size_t size)
{
    void  *p;

    size = (size + 15) & ~(size_t) 15;

    if (size > sizeof(fi_arena) - fi_arena_used) {
        return NULL;
    }

    p = fi_arena + fi_arena_used;
    fi_arena_used += size;

    return p;                           /* zeroed: static storage */
}

static int
fi_in_arena(void *p)
{
    return (char *) p >= fi_arena && (char *) p < fi_arena + sizeof(fi_arena);
}


static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static CURLMcode (*real_multi_add)(CURLM *, CURL *);
static CURL *(*real_easy_init)(void);
static int (*real_send_params)(PGconn *, const char *, int, const Oid *,
    const char *const *, const int *, const int *, int);
static int (*real_send_query)(PGconn *, const char *);


static void *
fi_real(const char *name)
{
    void  *f;

    fi_busy++;
    f = dlsym(RTLD_NEXT, name);
    fi_busy--;

    if (f == NULL) {
        static const char  msg[] = "failinject: a function was not found\n";

        (void) write(2, msg, sizeof(msg) - 1);
        abort();
    }

    return f;
}


static long
fi_atol(const char *s, long def)
{
    long  n;

    if (s == NULL || *s == '\0') {
        return def;
    }

    for (n = 0; *s >= '0' && *s <= '9'; s++) {
        n = n * 10 + (*s - '0');
    }

    return n;
}


/*
 * Reads the settings, once libc is up (a constructor: the environment may
 * not be there yet for the first mallocs, made while libraries load).
 * Nothing here allocates.
 */

__attribute__((constructor))
static void
fi_init(void)
{
    int          i;
    const char  *v;

    v = getenv("ADL_FI_FUNC");

    for (i = 1; v && i < (int) (sizeof(fi_names) / sizeof(fi_names[0])); i++) {
        if (strcmp(v, fi_names[i]) == 0) {
            fi_func = i;
        }
    }

    fi_n = fi_atol(getenv("ADL_FI_N"), 0);
    fi_times = fi_atol(getenv("ADL_FI_TIMES"), 1);
    fi_start = getenv("ADL_FI_START");

    if (fi_start == NULL) {
        fi_start = "async_dl_claim";
    }

    fi_started = (*fi_start == '\0');

    v = getenv("ADL_FI_LOG");

    if (v && *v) {
        fi_log = open(v, O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, 0644);
    }

    /* backtrace() loads libgcc_s the first time: now, not while failing */
    if (fi_func != FI_NONE) {
        void  *frame;

        fi_busy++;
        (void) backtrace(&frame, 1);
        fi_busy--;
    }

    fi_inited = 1;
}


static void
fi_write(const char *s)
{
    if (fi_log != -1) {
        (void) write(fi_log, s, strlen(s));
    }
}


static void
fi_write_num(long n)
{
    char  buf[24], *p;

    p = buf + sizeof(buf);
    *--p = '\0';

    do {
        *--p = (char) ('0' + n % 10);
        n /= 10;
    } while (n && p > buf);

    fi_write(p);
}


/* is this call of func the one (or one of those) to fail? */

static int
fi_fail(int func)
{
    void  *frames[32];
    int    n;

    if (!fi_inited || func != fi_func || !fi_started || fi_busy) {
        return 0;
    }

    if (fi_thread == 0) {
        fi_thread = (syscall(SYS_gettid) == getpid()) ? 1 : 2;
    }

    if (fi_thread != 1) {
        return 0;
    }

    fi_count++;

    if (fi_n == 0 || fi_count < fi_n || fi_count >= fi_n + fi_times) {
        return 0;
    }

    fi_failed++;

    fi_busy++;

    fi_write("failinject: failing ");
    fi_write(fi_names[func]);
    fi_write(" call ");
    fi_write_num(fi_count);
    fi_write(", from:\n");

    n = backtrace(frames, 32);

    if (fi_log != -1) {
        backtrace_symbols_fd(frames + 1, n - 1, fi_log);
    }

    fi_write("failinject: end of stack\n");

    fi_busy--;

    return 1;
}


/* the start signal: the first statement whose SQL has ADL_FI_START */

static void
fi_watch(const char *sql)
{
    if (fi_inited && !fi_started && sql && strstr(sql, fi_start) != NULL) {
        fi_started = 1;
    }
}


__attribute__((destructor))
static void
fi_exit(void)
{
    if (fi_func == FI_NONE) {
        return;
    }

    fi_write("failinject: ");
    fi_write(fi_names[fi_func]);
    fi_write(" counted ");
    fi_write_num(fi_count);
    fi_write(" failed ");
    fi_write_num(fi_failed);
    fi_write(fi_started ? "\n" : " (never started)\n");
}


/* the allocator */

void *
malloc(size_t size)
{
    if (real_malloc == NULL) {
        if (fi_busy) {
            return fi_arena_alloc(size);
        }

        real_malloc = fi_real("malloc");
    }

    if (fi_fail(FI_MALLOC)) {
        return NULL;
    }

    return real_malloc(size);
}


void *
calloc(size_t n, size_t size)
{
    if (real_calloc == NULL) {
        if (fi_busy) {
            if (size && n > (size_t) -1 / size) {
                return NULL;
            }
            return fi_arena_alloc(n * size);
        }

        real_calloc = fi_real("calloc");
    }

    if (fi_fail(FI_CALLOC)) {
        return NULL;
    }

    return real_calloc(n, size);
}


void *
realloc(void *p, size_t size)
{
    void  *q;

    if (real_realloc == NULL) {
        if (fi_busy) {
            return NULL;
        }

        real_realloc = fi_real("realloc");
    }

    if (fi_in_arena(p)) {
        /* an arena block's size is not kept: copy what can be there */
        q = malloc(size);
        if (q) {
            memcpy(q, p, size < (size_t) (fi_arena + sizeof(fi_arena)
                                          - (char *) p)
                         ? size
                         : (size_t) (fi_arena + sizeof(fi_arena) - (char *) p));
        }
        return q;
    }

    if (fi_fail(FI_REALLOC)) {
        return NULL;
    }

    return real_realloc(p, size);
}


void
free(void *p)
{
    if (p == NULL || fi_in_arena(p)) {
        return;
    }

    if (real_free == NULL) {
        if (fi_busy) {
            return;                     /* dlsym() freeing while we look */
        }

        real_free = fi_real("free");
    }

    real_free(p);
}


/* libcurl */

CURLMcode
curl_multi_add_handle(CURLM *multi, CURL *easy)
{
    if (real_multi_add == NULL) {
        real_multi_add = fi_real("curl_multi_add_handle");
    }

    if (fi_fail(FI_MULTI_ADD)) {
        return CURLM_OUT_OF_MEMORY;
    }

    return real_multi_add(multi, easy);
}


CURL *
curl_easy_init(void)
{
    if (real_easy_init == NULL) {
        real_easy_init = fi_real("curl_easy_init");
    }

    if (fi_fail(FI_EASY_INIT)) {
        return NULL;
    }

    return real_easy_init();
}


/* libpq */

int
PQsendQueryParams(PGconn *conn, const char *command, int nParams,
    const Oid *paramTypes, const char *const *paramValues,
    const int *paramLengths, const int *paramFormats, int resultFormat)
{
    int  fail;

    if (real_send_params == NULL) {
        real_send_params = fi_real("PQsendQueryParams");
    }

    fail = fi_fail(FI_SEND_PARAMS);
    fi_watch(command);

    if (fail) {
        return 0;
    }

    return real_send_params(conn, command, nParams, paramTypes, paramValues,
                            paramLengths, paramFormats, resultFormat);
}


int
PQsendQuery(PGconn *conn, const char *query)
{
    int  fail;

    if (real_send_query == NULL) {
        real_send_query = fi_real("PQsendQuery");
    }

    fail = fi_fail(FI_SEND_QUERY);
    fi_watch(query);

    if (fail) {
        return 0;
    }

    return real_send_query(conn, query);
}
