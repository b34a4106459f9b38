/* recorder.c: a minimal NVTX tool for the tests. NVTX itself loads it from
 * NVTX_INJECTION64_PATH at its one-time initialisation (the way Nsight Systems
 * attaches) and calls InitializeInjectionNvtx2, which puts this file's
 * handlers into NVTX's core-v2 function table. Every handled call appends
 * one tab-separated line to the file named by STAGETRACE_NVTX_LOG:
 *
 *   tid  op  domain  message  argb  category  payload  range_id
 *
 * message is "reg:<text>" for a registered string handle (resolved back to
 * the text it was registered with), "txt:<text>" for plain ASCII, "-" for
 * none. Tabs and newlines inside texts are written as spaces. Built by
 * tests/test_nvtx_injection.py; no part of StageTrace links it. */
#define _GNU_SOURCE
#define NVTX_NO_IMPL /* only the types: NVTX's own implementation lives in the host */
#include <nvtx3/nvToolsExt.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* What the opaque handles handed back to NVTX point at. */
typedef struct recorder_domain {
    char name[128];
} recorder_domain;

typedef struct recorder_string {
    char text[256];
} recorder_string;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER; /* guards log_file, next_range */
static FILE *log_file;
static uint64_t next_range = 1;

static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++) {
        dst[i] = src[i] == '\t' || src[i] == '\n' ? ' ' : src[i];
    }
    dst[i] = '\0';
}

/* The attributes' message as "reg:..." / "txt:..." / "-". */
static void describe_message(char *out, size_t cap, const nvtxEventAttributes_t *a)
{
    char text[256];
    if (a->messageType == NVTX_MESSAGE_TYPE_REGISTERED && a->message.registered) {
        copy_text(text, sizeof text, ((const recorder_string *)a->message.registered)->text);
        snprintf(out, cap, "reg:%s", text);
    } else if (a->messageType == NVTX_MESSAGE_TYPE_ASCII && a->message.ascii) {
        copy_text(text, sizeof text, a->message.ascii);
        snprintf(out, cap, "txt:%s", text);
    } else {
        snprintf(out, cap, "-");
    }
}

/* Append one line. a may be NULL; message_text is used when a is NULL. */
static void log_call(const char *op, nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a,
                     const char *message_text, uint64_t range_id)
{
    char message[300] = "-";
    unsigned argb = 0, category = 0;
    unsigned long long payload = 0;
    if (a) {
        describe_message(message, sizeof message, a);
        argb = a->colorType == NVTX_COLOR_ARGB ? a->color : 0;
        category = a->category;
        payload = a->payloadType == NVTX_PAYLOAD_TYPE_UNSIGNED_INT64 ? a->payload.ullValue : 0;
    } else if (message_text) {
        char text[256];
        copy_text(text, sizeof text, message_text);
        snprintf(message, sizeof message, "txt:%s", text);
    }
    const char *domain_name = domain ? ((const recorder_domain *)domain)->name : "-";
    long tid = (long)syscall(SYS_gettid);
    pthread_mutex_lock(&log_lock);
    if (log_file) {
        fprintf(log_file, "%ld\t%s\t%s\t%s\t%u\t%u\t%llu\t%llu\n", tid, op, domain_name, message,
                argb, category, payload, (unsigned long long)range_id);
        fflush(log_file);
    }
    pthread_mutex_unlock(&log_lock);
}

// --- Handlers ---------------------------------------------------------------

static nvtxDomainHandle_t NVTX_API on_domain_create(const char *name)
{
    recorder_domain *d = calloc(1, sizeof *d);
    if (!d) {
        return NULL;
    }
    copy_text(d->name, sizeof d->name, name);
    log_call("domain_create", (nvtxDomainHandle_t)d, NULL, NULL, 0);
    return (nvtxDomainHandle_t)d;
}

static nvtxStringHandle_t NVTX_API on_register_string(nvtxDomainHandle_t domain, const char *text)
{
    recorder_string *s = calloc(1, sizeof *s);
    if (!s) {
        return NULL;
    }
    copy_text(s->text, sizeof s->text, text);
    log_call("register_string", domain, NULL, text, 0);
    return (nvtxStringHandle_t)s;
}

static void NVTX_API on_name_category(nvtxDomainHandle_t domain, uint32_t category,
                                      const char *name)
{
    char text[200];
    snprintf(text, sizeof text, "%u=%s", category, name ? name : "");
    log_call("name_category", domain, NULL, text, 0);
}

static int NVTX_API on_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a)
{
    log_call("push", domain, a, NULL, 0);
    return 0;
}

static int NVTX_API on_pop(nvtxDomainHandle_t domain)
{
    log_call("pop", domain, NULL, NULL, 0);
    return 0;
}

static nvtxRangeId_t NVTX_API on_range_start(nvtxDomainHandle_t domain,
                                             const nvtxEventAttributes_t *a)
{
    pthread_mutex_lock(&log_lock);
    uint64_t id = next_range++;
    pthread_mutex_unlock(&log_lock);
    log_call("start", domain, a, NULL, id);
    return id;
}

static void NVTX_API on_range_end(nvtxDomainHandle_t domain, nvtxRangeId_t id)
{
    log_call("end", domain, NULL, NULL, id);
}

static void NVTX_API on_mark(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a)
{
    log_call("mark", domain, a, NULL, 0);
}

/* A tool must survive fork() itself: log_lock is held across it, so a child
 * forked while another thread logs does not deadlock on it. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&log_lock);
}

static void fork_release(void)
{
    pthread_mutex_unlock(&log_lock);
}

// --- Attaching --------------------------------------------------------------

/* Called once by NVTX. Returns 1 to attach, 0 to leave NVTX in its no-tool
 * state (no log file named, or an NVTX without the core-v2 table). */
__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get)
{
    const NvtxExportTableCallbacks *callbacks = get(NVTX_ETID_CALLBACKS);
    if (!callbacks || callbacks->struct_size < sizeof *callbacks) {
        return 0;
    }
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size) || !table) {
        return 0;
    }
    const char *path = getenv("STAGETRACE_NVTX_LOG");
    log_file = path ? fopen(path, "a") : NULL;
    if (!log_file || pthread_atfork(fork_prepare, fork_release, fork_release) != 0) {
        return 0;
    }
    const NvtxExportTableVersionInfo *version = get(NVTX_ETID_VERSIONINFO);
    if (version && version->struct_size >= sizeof *version && version->SetInjectionNvtxVersion) {
        version->SetInjectionNvtxVersion(NVTX_VERSION);
    }
    const struct {
        unsigned id;
        NvtxFunctionPointer handler;
    } handlers[] = {
        {NVTX_CBID_CORE2_DomainCreateA, (NvtxFunctionPointer)on_domain_create},
        {NVTX_CBID_CORE2_DomainRegisterStringA, (NvtxFunctionPointer)on_register_string},
        {NVTX_CBID_CORE2_DomainNameCategoryA, (NvtxFunctionPointer)on_name_category},
        {NVTX_CBID_CORE2_DomainRangePushEx, (NvtxFunctionPointer)on_push},
        {NVTX_CBID_CORE2_DomainRangePop, (NvtxFunctionPointer)on_pop},
        {NVTX_CBID_CORE2_DomainRangeStartEx, (NvtxFunctionPointer)on_range_start},
        {NVTX_CBID_CORE2_DomainRangeEnd, (NvtxFunctionPointer)on_range_end},
        {NVTX_CBID_CORE2_DomainMarkEx, (NvtxFunctionPointer)on_mark},
    };
    /* table[id] points at NVTX's slot for callback id; size counts the slots */
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (handlers[i].id < size && table[handlers[i].id]) {
            *table[handlers[i].id] = handlers[i].handler;
        }
    }
    return 1;
}
