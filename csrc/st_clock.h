/* st_clock: the one monotonic nanosecond clock every StageTrace timestamp uses. */
#ifndef ST_CLOCK_H
#define ST_CLOCK_H

#include <stdint.h>

/* Nanoseconds on CLOCK_MONOTONIC (or the fake clock while one is set).
 * Thread-safe, lock-free, no GIL needed. This function can't fail. */
uint64_t st_clock_now_ns(void);

/* Replace the clock with a deterministic one for tests: the first call after
 * this returns start_ns, each later call adds step_ns. Not for production use;
 * call it while no other thread is taking timestamps. This function can't fail. */
void st_clock_set_fake(uint64_t start_ns, uint64_t step_ns);

/* Go back to the real clock. This function can't fail. */
void st_clock_set_real(void);

#endif
