# The split virtqueue as guests lay it out in their memory (vs_defs.h; virtio
# spec "Split Virtqueues"). Every field may change under us at any time: the
# datapath reads each one once into a local and validates the local.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "vs_defs.h" nogil:
    enum:
        VRING_DESC_F_NEXT
        VRING_DESC_F_WRITE
        VRING_DESC_F_INDIRECT
        VRING_USED_F_NO_NOTIFY
        VRING_AVAIL_F_NO_INTERRUPT
    struct vs_vring_desc:
        uint64_t addr
        uint32_t len
        uint16_t flags
        uint16_t next
    struct vs_vring_avail:
        uint16_t flags
        uint16_t idx
        uint16_t ring[1]
    struct vs_vring_used_elem:
        uint32_t id
        uint32_t len
    struct vs_vring_used:
        uint16_t flags
        uint16_t idx
        vs_vring_used_elem ring[1]
    # virtio spec 2.7.10 vring_need_event
    int vs_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx)
    # live migration: mark a 4 KiB guest page in the dirty log (atomic OR)
    void vs_log_page(uint8_t *log, uint64_t page)
    # copies of up to VS_INLINE_COPY bytes inline, larger ones by memcpy
    void vs_copy(void *dst, const void *src, uint32_t n)
    enum: VS_INLINE_COPY
    # a MAC address as a 48-bit integer, first byte highest (fdb.pxi mac_load)
    uint64_t vs_mac_load(const uint8_t *p)
    # a 12-byte virtio-net header into an RX buffer, only what differs
    void vs_put_vnet_hdr12(uint8_t *dst, const uint8_t *hdr, uint16_t nbuf)
