/* A minimal NVTX tool for the tests: loaded by NVTX itself through
 * NVTX_INJECTION64_PATH, it installs its own handlers in NVTX's core-v2
 * function table and writes one tab-separated line per call to the file named
 * by STAGETRACE_NVTX_LOG:
 *
 *   tid  op  domain  message  argb  category  payload  range_id
 *
 * message is "reg:<text>" for a registered string, "txt:<text>" for ASCII. */
#define _GNU_SOURCE
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct recorder_domain {
    char *name;
};
struct recorder_string {
    char *text;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_file;
static uint64_t next_range_id = 1;

static void log_line(const char *op, nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a,
                     const char *extra, uint64_t range_id)
{
    const char *dname = domain ? ((struct recorder_domain *)domain)->name : "-";
    char message[512] = "-";
    unsigned argb = 0, category = 0;
    unsigned long long payload = 0;
    if (a) {
        if (a->messageType == NVTX_MESSAGE_TYPE_REGISTERED && a->message.registered) {
            snprintf(message, sizeof message, "reg:%s",
                     ((struct recorder_string *)a->message.registered)->text);
        } else if (a->messageType == NVTX_MESSAGE_TYPE_ASCII && a->message.ascii) {
            snprintf(message, sizeof message, "txt:%s", a->message.ascii);
        }
        argb = a->colorType == NVTX_COLOR_ARGB ? a->color : 0;
        category = a->category;
        payload = a->payloadType == NVTX_PAYLOAD_TYPE_UNSIGNED_INT64 ? a->payload.ullValue : 0;
    } else if (extra) {
        snprintf(message, sizeof message, "txt:%s", extra);
    }
    pthread_mutex_lock(&log_lock);
    if (log_file) {
        fprintf(log_file, "%ld\t%s\t%s\t%s\t%u\t%u\t%llu\t%llu\n", (long)syscall(SYS_gettid), op,
                dname, message, argb, category, payload, (unsigned long long)range_id);
        fflush(log_file);
    }
    pthread_mutex_unlock(&log_lock);
}

static nvtxDomainHandle_t NVTX_API domain_create(const char *name)
{
    struct recorder_domain *d = calloc(1, sizeof *d);
    d->name = strdup(name);
    log_line("domain_create", (nvtxDomainHandle_t)d, NULL, NULL, 0);
    return (nvtxDomainHandle_t)d;
}

static nvtxStringHandle_t NVTX_API register_string(nvtxDomainHandle_t domain, const char *text)
{
    struct recorder_string *s = calloc(1, sizeof *s);
    s->text = strdup(text);
    log_line("register_string", domain, NULL, text, 0);
    return (nvtxStringHandle_t)s;
}

static void NVTX_API name_category(nvtxDomainHandle_t domain, uint32_t category, const char *name)
{
    char text[300];
    snprintf(text, sizeof text, "%u=%s", category, name);
    log_line("name_category", domain, NULL, text, 0);
}

static int NVTX_API push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a)
{
    log_line("push", domain, a, NULL, 0);
    return 0;
}

static int NVTX_API pop(nvtxDomainHandle_t domain)
{
    log_line("pop", domain, NULL, NULL, 0);
    return 0;
}

static nvtxRangeId_t NVTX_API range_start(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a)
{
    pthread_mutex_lock(&log_lock);
    uint64_t id = next_range_id++;
    pthread_mutex_unlock(&log_lock);
    log_line("start", domain, a, NULL, id);
    return id;
}

static void NVTX_API range_end(nvtxDomainHandle_t domain, nvtxRangeId_t id)
{
    log_line("end", domain, NULL, NULL, id);
}

static void NVTX_API mark(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *a)
{
    log_line("mark", domain, a, NULL, 0);
}

__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get)
{
    const NvtxExportTableCallbacks *callbacks = get(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size)) {
        return 0;
    }
    const char *path = getenv("STAGETRACE_NVTX_LOG");
    log_file = path ? fopen(path, "a") : NULL;
    if (!log_file) {
        return 0;
    }
    struct {
        unsigned id;
        NvtxFunctionPointer fn;
    } handlers[] = {
        {NVTX_CBID_CORE2_DomainCreateA, (NvtxFunctionPointer)domain_create},
        {NVTX_CBID_CORE2_DomainRegisterStringA, (NvtxFunctionPointer)register_string},
        {NVTX_CBID_CORE2_DomainNameCategoryA, (NvtxFunctionPointer)name_category},
        {NVTX_CBID_CORE2_DomainRangePushEx, (NvtxFunctionPointer)push},
        {NVTX_CBID_CORE2_DomainRangePop, (NvtxFunctionPointer)pop},
        {NVTX_CBID_CORE2_DomainRangeStartEx, (NvtxFunctionPointer)range_start},
        {NVTX_CBID_CORE2_DomainRangeEnd, (NvtxFunctionPointer)range_end},
        {NVTX_CBID_CORE2_DomainMarkEx, (NvtxFunctionPointer)mark},
    };
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (handlers[i].id < size && table[handlers[i].id]) {
            *table[handlers[i].id] = handlers[i].fn;
        }
    }
    return 1;
}
