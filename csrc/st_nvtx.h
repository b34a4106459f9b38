/* st_nvtx: live NVTX ranges in the "StageTrace" domain, so Nsight Systems shows
 * stages over CUDA work. Built without NVTX headers, every call is a no-op. */
#ifndef ST_NVTX_H
#define ST_NVTX_H

#include <stdint.h>

/* 1 when this build has NVTX support. Can't fail. */
int st_nvtx_compiled(void);

/* Create the domain and name the stage categories, once; later calls do
 * nothing. Call with the GIL held (module init). Cheap: NVTX itself only
 * loads a tool when NVTX_INJECTION64_PATH (or a profiler) provides one. */
void st_nvtx_init(void);

/* Turn emission on or off (on after init). Can't fail. */
void st_nvtx_set_enabled(int on);
int st_nvtx_enabled(void);

/* Register the interned name id with NVTX so ranges carry a registered
 * string instead of copying the text every call. Idempotent and lock-free
 * (the first caller for a name registers it; until its handle is published
 * ranges carry the text); can't fail (a failed registration falls back to
 * an unregistered message). */
void st_nvtx_register_name(uint32_t name_id, const char *utf8);

/* Push/pop a thread-bound range (sync calls). Payload is a uint64 (node id).
 * Balanced whatever the switch does in between: push returns 1 when it
 * reached NVTX, and the matching pop pops NVTX exactly then (even if emission
 * was turned off meanwhile); a pop with no push open on the thread does
 * nothing. Lock-free; no GIL needed. Can't fail. */
int st_nvtx_push(unsigned stage, uint32_t name_id, uint64_t payload);
void st_nvtx_pop(void);

/* Start/end a range not bound to a thread (coroutines that may suspend).
 * Returns the range id to pass to st_nvtx_end (0 when disabled); a started
 * range is ended even if emission was turned off since. */
uint64_t st_nvtx_start(unsigned stage, uint32_t name_id, uint64_t payload);
void st_nvtx_end(uint64_t range_id);

/* An instantaneous marker. */
void st_nvtx_mark(unsigned stage, uint32_t name_id, uint64_t payload);

#endif
