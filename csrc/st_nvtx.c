/* st_nvtx: NVTX v3 (header-only) emission. The headers come from the CUDA
 * toolkit or NVIDIA's nvidia-nvtx pip wheels at build time (setup.py); none
 * are copied into this repository. */
#include "st_nvtx.h"

#include "st_stage.h"

#ifdef ST_HAVE_NVTX

#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "st_intern.h"

#define CHUNK_BITS 10u
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define CHUNK_COUNT (ST_INTERN_MAX / CHUNK_SIZE)

/* NULL when no tool is attached: NVTX's no-tool path returns a null domain,
 * and a tool can only attach at NVTX's one-time initialisation. */
static nvtxDomainHandle_t domain;
static atomic_int enabled;

/* Emission is wanted and some tool listens. */
static inline int active(void)
{
    return atomic_load_explicit(&enabled, memory_order_relaxed) && domain != NULL;
}
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static nvtxStringHandle_t *_Atomic name_chunks[CHUNK_COUNT];

static void init_domain(void)
{
    domain = nvtxDomainCreateA("StageTrace");
    for (unsigned s = 0; s < ST_STAGE_COUNT; s++) {
        nvtxDomainNameCategoryA(domain, s + 1, st_stage_name(s));
    }
    atomic_store(&enabled, 1);
}

int st_nvtx_compiled(void)
{
    return 1;
}

void st_nvtx_init(void)
{
    pthread_once(&init_once, init_domain);
}

void st_nvtx_set_enabled(int on)
{
    if (on) {
        st_nvtx_init();
    }
    atomic_store(&enabled, on ? 1 : 0);
}

int st_nvtx_enabled(void)
{
    return atomic_load_explicit(&enabled, memory_order_relaxed);
}

void st_nvtx_register_name(uint32_t name_id, const char *utf8)
{
    if (name_id >= ST_INTERN_MAX || !domain) {
        return;
    }
    pthread_mutex_lock(&names_lock);
    nvtxStringHandle_t *chunk = atomic_load(&name_chunks[name_id >> CHUNK_BITS]);
    if (!chunk) {
        chunk = calloc(CHUNK_SIZE, sizeof *chunk);
        if (chunk) {
            atomic_store(&name_chunks[name_id >> CHUNK_BITS], chunk);
        }
    }
    if (chunk && !chunk[name_id & (CHUNK_SIZE - 1)]) {
        chunk[name_id & (CHUNK_SIZE - 1)] = nvtxDomainRegisterStringA(domain, utf8);
    }
    pthread_mutex_unlock(&names_lock);
}

/* Fill attributes: registered name (or the text), stage colour and category,
 * payload. */
static void attributes(nvtxEventAttributes_t *a, unsigned stage, uint32_t name_id,
                       uint64_t payload)
{
    a->version = NVTX_VERSION;
    a->size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a->category = stage + 1;
    a->colorType = NVTX_COLOR_ARGB;
    a->color = st_stage_colour(stage);
    a->payloadType = NVTX_PAYLOAD_TYPE_UNSIGNED_INT64;
    a->reserved0 = 0;
    a->payload.ullValue = payload;
    nvtxStringHandle_t *chunk = name_id < ST_INTERN_MAX
        ? atomic_load_explicit(&name_chunks[name_id >> CHUNK_BITS], memory_order_acquire)
        : NULL;
    nvtxStringHandle_t handle = chunk ? chunk[name_id & (CHUNK_SIZE - 1)] : NULL;
    if (handle) {
        a->messageType = NVTX_MESSAGE_TYPE_REGISTERED;
        a->message.registered = handle;
    } else {
        size_t len;
        const char *text = st_intern_lookup(name_id, &len);
        a->messageType = NVTX_MESSAGE_TYPE_ASCII;
        a->message.ascii = text ? text : st_stage_name(stage);
    }
}

void st_nvtx_push(unsigned stage, uint32_t name_id, uint64_t payload)
{
    if (!active()) {
        return;
    }
    nvtxEventAttributes_t a;
    attributes(&a, stage, name_id, payload);
    nvtxDomainRangePushEx(domain, &a);
}

void st_nvtx_pop(void)
{
    if (!active()) {
        return;
    }
    nvtxDomainRangePop(domain);
}

uint64_t st_nvtx_start(unsigned stage, uint32_t name_id, uint64_t payload)
{
    if (!active()) {
        return 0;
    }
    nvtxEventAttributes_t a;
    attributes(&a, stage, name_id, payload);
    return nvtxDomainRangeStartEx(domain, &a);
}

void st_nvtx_end(uint64_t range_id)
{
    if (range_id && active()) {
        nvtxDomainRangeEnd(domain, range_id);
    }
}

void st_nvtx_mark(unsigned stage, uint32_t name_id, uint64_t payload)
{
    if (!active()) {
        return;
    }
    nvtxEventAttributes_t a;
    attributes(&a, stage, name_id, payload);
    nvtxDomainMarkEx(domain, &a);
}

#else /* built without NVTX headers */

int st_nvtx_compiled(void) { return 0; }
void st_nvtx_init(void) {}
void st_nvtx_set_enabled(int on) { (void)on; }
int st_nvtx_enabled(void) { return 0; }
void st_nvtx_register_name(uint32_t name_id, const char *utf8) { (void)name_id; (void)utf8; }
void st_nvtx_push(unsigned stage, uint32_t name_id, uint64_t payload)
{
    (void)stage; (void)name_id; (void)payload;
}
void st_nvtx_pop(void) {}
uint64_t st_nvtx_start(unsigned stage, uint32_t name_id, uint64_t payload)
{
    (void)stage; (void)name_id; (void)payload;
    return 0;
}
void st_nvtx_end(uint64_t range_id) { (void)range_id; }
void st_nvtx_mark(unsigned stage, uint32_t name_id, uint64_t payload)
{
    (void)stage; (void)name_id; (void)payload;
}

#endif
