# io_uring without liburing (vs_uring.h): batched writes into TAP queues, and
# the notification ring that writes guests' call eventfds without blocking.

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from includes.system cimport iovec

cdef extern from "vs_uring.h" nogil:
    enum:
        VS_URING_FILES
    struct vs_uring:
        int enabled
        int fixed
        int restricted
        int fd
        unsigned pending
        uint64_t enters
        uint64_t submitted
    int vs_uring_init(vs_uring *r)
    int vs_uring_init_ring(vs_uring *r, unsigned entries, int files)
    void vs_uring_queue_write_async(vs_uring *r, int fd, const void *buf, uint32_t len, uint64_t tag)
    unsigned vs_uring_space(const vs_uring *r)
    void vs_uring_queue_op(vs_uring *r, uint8_t opcode, int fd, uint64_t tag)
    void vs_uring_queue_cancel(vs_uring *r, uint64_t target, uint64_t tag)
    int vs_uring_submit(vs_uring *r)
    int vs_uring_pop(vs_uring *r, uint64_t *tag, int32_t *res)
    int vs_uring_flush_overflow(vs_uring *r)
    void vs_uring_exit(vs_uring *r)
    int vs_uring_set_file(vs_uring *r, unsigned index, int fd)
    void vs_uring_queue_write(vs_uring *r, int fd, int fixed, const void *buf, uint32_t len, uint64_t tag)
    void vs_uring_queue_writev(vs_uring *r, int fd, int fixed, const iovec *iov, uint32_t cnt,
                               uint64_t tag)
    int vs_uring_flush(vs_uring *r, int32_t *res)
