/* st_fork: StageTrace's locks across fork(). */
#ifndef ST_FORK_H
#define ST_FORK_H

/* Register, once per process, the pthread_atfork handlers of every unit
 * that has a lock, so that a child forked while another thread holds one
 * does not deadlock, and starts with consistent state: its own buffers only,
 * GPU collection off. Call before any thread records (module init). Returns
 * 0, or an errno value when the handlers could not be registered. No GIL
 * needed. */
int st_fork_install(void);

#endif
