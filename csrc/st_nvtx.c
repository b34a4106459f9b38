/* st_nvtx: NVTX v3 (header-only) emission. The headers come from the CUDA
 * toolkit or NVIDIA's nvidia-nvtx pip wheels at build time (setup.py); none
 * are copied into this repository.
 *
 * Balance: the switch may flip while a range is open. A thread keeps a stack
 * of bits, one per st_nvtx_push, saying whether that push reached NVTX;
 * st_nvtx_pop pops NVTX only for a push that did, whatever the switch says
 * now, and does nothing on a thread with no push open. A start/end range is
 * ended whenever it was started (its id is not 0). With no tool attached
 * none of this runs: the domain is NULL for good, checked first.
 *
 * Names are registered once, with no lock: the first thread to claim a
 * name's slot (compare-and-swap) registers it and publishes the handle;
 * every later call is one atomic load. No lock of StageTrace's is held while
 * NVTX or its tool runs, so a tool's own locks (and its fork handlers) can
 * never order against ours. */
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
static _Atomic(nvtxDomainHandle_t) domain_handle;
static atomic_int enabled;

/* The domain, NULL when no tool listens (for good). */
static inline nvtxDomainHandle_t domain_of(void)
{
    return atomic_load_explicit(&domain_handle, memory_order_acquire);
}

/* Emission is wanted and some tool listens. */
static inline int active(void)
{
    return atomic_load_explicit(&enabled, memory_order_relaxed) && domain_of() != NULL;
}
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
/* A name's slot: NULL until claimed, then REGISTERING while the claiming
 * thread registers it, then its handle (UNREGISTERED if the tool gave none). */
typedef _Atomic(nvtxStringHandle_t) name_slot;
static name_slot *_Atomic name_chunks[CHUNK_COUNT];
#define REGISTERING ((nvtxStringHandle_t)(uintptr_t)1)
#define UNREGISTERED ((nvtxStringHandle_t)(uintptr_t)2)

/* The calling thread's pushes: bit i of pushed says whether push number i
 * (from the bottom) reached NVTX. Pushes deeper than PUSH_DEPTH are not
 * emitted (and so not popped). */
#define PUSH_DEPTH 256u
static __thread struct {
    uint32_t depth;
    uint64_t pushed[PUSH_DEPTH / 64];
} stack;

static void init_domain(void)
{
    nvtxDomainHandle_t d = nvtxDomainCreateA("StageTrace");
    for (unsigned s = 0; s < ST_STAGE_COUNT; s++) {
        nvtxDomainNameCategoryA(d, s + 1, st_stage_name(s));
    }
    atomic_store_explicit(&domain_handle, d, memory_order_release);
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
    nvtxDomainHandle_t d = domain_of();
    if (name_id >= ST_INTERN_MAX || !d) {
        return;
    }
    name_slot *_Atomic *at = &name_chunks[name_id >> CHUNK_BITS];
    name_slot *chunk = atomic_load_explicit(at, memory_order_acquire);
    if (!chunk) { /* first name of its chunk: make the chunk, first maker wins */
        name_slot *fresh = calloc(CHUNK_SIZE, sizeof *fresh);
        if (!fresh) {
            return;
        }
        if (atomic_compare_exchange_strong_explicit(at, &chunk, fresh, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            chunk = fresh;
        } else {
            free(fresh);
        }
    }
    name_slot *slot = &chunk[name_id & (CHUNK_SIZE - 1)];
    nvtxStringHandle_t seen = atomic_load_explicit(slot, memory_order_acquire);
    if (seen || !atomic_compare_exchange_strong_explicit(slot, &seen, REGISTERING, memory_order_acquire,
                                                         memory_order_relaxed)) {
        return; /* the hot path: registered before (or being registered now) */
    }
    /* this thread claimed the name: the tool is called under no lock of ours */
    nvtxStringHandle_t handle = nvtxDomainRegisterStringA(d, utf8);
    atomic_store_explicit(slot, handle ? handle : UNREGISTERED, memory_order_release);
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
    name_slot *chunk = name_id < ST_INTERN_MAX
        ? atomic_load_explicit(&name_chunks[name_id >> CHUNK_BITS], memory_order_acquire)
        : NULL;
    nvtxStringHandle_t handle =
        chunk ? atomic_load_explicit(&chunk[name_id & (CHUNK_SIZE - 1)], memory_order_acquire) : NULL;
    if (handle && handle != REGISTERING && handle != UNREGISTERED) {
        a->messageType = NVTX_MESSAGE_TYPE_REGISTERED;
        a->message.registered = handle;
    } else {
        size_t len;
        const char *text = st_intern_lookup(name_id, &len);
        a->messageType = NVTX_MESSAGE_TYPE_ASCII;
        a->message.ascii = text ? text : st_stage_name(stage);
    }
}

int st_nvtx_push(unsigned stage, uint32_t name_id, uint64_t payload)
{
    nvtxDomainHandle_t d = domain_of();
    if (!d) {
        return 0; /* no tool: nothing to balance */
    }
    uint32_t level = stack.depth++;
    int emit = atomic_load_explicit(&enabled, memory_order_relaxed) && level < PUSH_DEPTH;
    if (level < PUSH_DEPTH) {
        uint64_t bit = (uint64_t)1 << (level & 63);
        stack.pushed[level / 64] = emit ? stack.pushed[level / 64] | bit : stack.pushed[level / 64] & ~bit;
    }
    if (emit) {
        nvtxEventAttributes_t a;
        attributes(&a, stage, name_id, payload);
        nvtxDomainRangePushEx(d, &a);
    }
    return emit;
}

void st_nvtx_pop(void)
{
    nvtxDomainHandle_t d = domain_of();
    if (!d || stack.depth == 0) {
        return; /* no pop without a push */
    }
    uint32_t level = --stack.depth;
    if (level < PUSH_DEPTH && (stack.pushed[level / 64] >> (level & 63) & 1)) {
        nvtxDomainRangePop(d); /* pushed: popped even if emission went off since */
    }
}

uint64_t st_nvtx_start(unsigned stage, uint32_t name_id, uint64_t payload)
{
    if (!active()) {
        return 0;
    }
    nvtxEventAttributes_t a;
    attributes(&a, stage, name_id, payload);
    return nvtxDomainRangeStartEx(domain_of(), &a);
}

void st_nvtx_end(uint64_t range_id)
{
    nvtxDomainHandle_t d = domain_of();
    if (range_id && d) { /* started: ended even if emission went off since */
        nvtxDomainRangeEnd(d, range_id);
    }
}

void st_nvtx_mark(unsigned stage, uint32_t name_id, uint64_t payload)
{
    if (!active()) {
        return;
    }
    nvtxEventAttributes_t a;
    attributes(&a, stage, name_id, payload);
    nvtxDomainMarkEx(domain_of(), &a);
}

#else /* built without NVTX headers */

int st_nvtx_compiled(void) { return 0; }
void st_nvtx_init(void) {}
void st_nvtx_set_enabled(int on) { (void)on; }
int st_nvtx_enabled(void) { return 0; }
void st_nvtx_register_name(uint32_t name_id, const char *utf8) { (void)name_id; (void)utf8; }
int st_nvtx_push(unsigned stage, uint32_t name_id, uint64_t payload)
{
    (void)stage; (void)name_id; (void)payload;
    return 0;
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
