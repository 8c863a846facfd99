/*
 * tapwall's native addon: frames in and out of TAP devices and AF_PACKET
 * sockets, a whole batch per call.
 *
 * Contract with TypeScript (src/io/native.ts; a test compares the two):
 *   - AF_PACKET sockets read through a TPACKET_V3 receive ring (64 blocks of
 *     256 KiB, retired after 1 ms) when the kernel allows, else recvmmsg;
 *     transmit is sendmmsg. Either way one call moves a batch.
 *   - A batch lives in one caller-owned Uint8Array `buf`; frame i occupies
 *     buf[offsets[i] .. offsets[i] + lengths[i]). offsets and lengths are
 *     Int32Arrays. readBatch fills slots 0 .. max-1 of `stride` bytes;
 *     writeBatch sends frames 0 .. count-1.
 *   - Return values: a count >= 0, or -errno. EAGAIN is not an error: a read
 *     returns the frames it got (maybe 0), a write the frames the kernel took.
 *   - Descriptors are non-blocking. watch(fd, cb) registers a libuv poll for
 *     readability on the Node.js event loop;
 *     cb(events) runs on the JS thread; unwatch(handle) stops it. Nothing
 *     here spins or blocks.
 *
 * Nothing here allocates per frame; readBatch/writeBatch allocate nothing at
 * all (iovec and mmsghdr arrays are fixed-size, MAX_BATCH entries; rings are
 * mapped once when a socket opens).
 *
 * State is per instance (napi_set_instance_data), never in module statics:
 * each Node.js environment that loads the addon (the main thread, a worker
 * thread) gets its own batch arrays and ring table, freed with it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <grp.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <linux/if_tun.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/virtio_net.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1) /* linux/fs.h; glibc before 2.28 does not say it */
#endif

#define MAX_BATCH 256
#define KIND_TAP 0
#define KIND_PACKET 1

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif


/*
 * TPACKET_V3 receive rings, by descriptor. The kernel fills blocks of frames;
 * readBatch copies frames out of the block the reader is in, and hands a block
 * back (TP_STATUS_KERNEL) once it has read all of it. A read may stop in the
 * middle of a block: `next`/`left` remember where.
 */
#include <sys/mman.h>
#define MAX_RING_FD 4096
#define RING_BLOCK_SIZE (1 << 18)
#define RING_BLOCKS 64
#define RING_FRAME_SIZE 2048
typedef struct {
  uint8_t* map;
  size_t map_len;
  unsigned block;      /* the block being read */
  uint32_t left;       /* frames left in it (0: not started) */
  uint8_t* next;       /* next frame in it */
  uint32_t vnet;       /* bytes of virtio_net_hdr the kernel puts before each frame (PACKET_VNET_HDR) */
} ring_t;

/* One instance's state: the recvmmsg/sendmmsg batch and the receive rings by descriptor. */
typedef struct {
  struct mmsghdr msgs[MAX_BATCH];
  struct iovec iov[MAX_BATCH];
  ring_t* rings[MAX_RING_FD];
} instance_t;

/* Point message i of the recvmmsg/sendmmsg batch at one frame. */
static void msg_set(instance_t* in, int i, uint8_t* base, size_t len) {
  in->iov[i].iov_base = base;
  in->iov[i].iov_len = len;
  memset(&in->msgs[i].msg_hdr, 0, sizeof in->msgs[i].msg_hdr);
  in->msgs[i].msg_hdr.msg_iov = &in->iov[i];
  in->msgs[i].msg_hdr.msg_iovlen = 1;
}

/* The ring of descriptor fd, or NULL. */
static ring_t* ring_of(instance_t* in, int fd) {
  return fd >= 0 && fd < MAX_RING_FD ? in->rings[fd] : NULL;
}

static int ring_setup(instance_t* in, int fd, uint32_t vnet) {
  int v = TPACKET_V3;
  if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0) return -1;
  struct tpacket_req3 req;
  memset(&req, 0, sizeof req);
  req.tp_block_size = RING_BLOCK_SIZE;
  req.tp_block_nr = RING_BLOCKS;
  req.tp_frame_size = RING_FRAME_SIZE;
  req.tp_frame_nr = (RING_BLOCK_SIZE / RING_FRAME_SIZE) * RING_BLOCKS;
  req.tp_retire_blk_tov = 1; /* ms: a partly filled block is handed over after this */
  if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) return -1;
  size_t len = (size_t)RING_BLOCK_SIZE * RING_BLOCKS;
  uint8_t* map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
  if (map == MAP_FAILED) map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return -1;
  ring_t* r = calloc(1, sizeof *r);
  if (!r) { munmap(map, len); return -1; }
  r->map = map;
  r->map_len = len;
  r->vnet = vnet;
  in->rings[fd] = r;
  return 0;
}

/* Copy up to max frames out of the ring; returns how many. */
static int ring_read(ring_t* r, uint8_t* buf, int32_t* offsets, int32_t* lengths, int max, int stride) {
  int got = 0;
  while (got < max) {
    struct tpacket_block_desc* bd = (struct tpacket_block_desc*)(r->map + (size_t)r->block * RING_BLOCK_SIZE);
    if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) break;
    if (r->left == 0 && r->next == NULL) {
      r->left = bd->hdr.bh1.num_pkts;
      r->next = (uint8_t*)bd + bd->hdr.bh1.offset_to_first_pkt;
    }
    while (r->left > 0 && got < max) {
      struct tpacket3_hdr* h = (struct tpacket3_hdr*)r->next;
      int32_t off = got * stride;
      /* With PACKET_VNET_HDR the virtio_net_hdr sits right before the MAC header: copy it along.
       * A VLAN tag the kernel took out of the frame (VLAN offload) is put back after the MACs,
       * so the frame goes on as it was sent. */
      int vlan = (h->tp_status & TP_STATUS_VLAN_VALID) && h->tp_snaplen >= 12;
      uint32_t len = h->tp_snaplen + r->vnet + (vlan ? 4 : 0);
      if (len > (uint32_t)stride || h->tp_snaplen < h->tp_len) {
        lengths[got] = stride + 1; /* cut short: the caller counts it malformed */
      } else if (!vlan) {
        memcpy(buf + off, (uint8_t*)h + h->tp_mac - r->vnet, len);
        lengths[got] = (int32_t)len;
      } else {
        uint8_t* src = (uint8_t*)h + h->tp_mac;
        uint8_t* dst = buf + off;
        uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid : ETH_P_8021Q;
        uint16_t tci = h->hv1.tp_vlan_tci;
        memcpy(dst, src - r->vnet, r->vnet + 12);
        dst += r->vnet + 12;
        dst[0] = tpid >> 8; dst[1] = tpid & 0xff; dst[2] = tci >> 8; dst[3] = tci & 0xff;
        memcpy(dst + 4, src + 12, h->tp_snaplen - 12);
        lengths[got] = (int32_t)len;
      }
      offsets[got] = off;
      got++;
      r->left--;
      r->next = (uint8_t*)h + h->tp_next_offset;
    }
    if (r->left == 0) {
      /* Done with this block: give it back to the kernel, move to the next. */
      __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
      r->block = (r->block + 1) % RING_BLOCKS;
      r->next = NULL;
    }
  }
  return got;
}

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, "TAPWALL_NAPI", "N-API call failed: " #call); \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

/* yaml.c: a YAML document as JSON text, or null. */
napi_value yaml_to_json(napi_env env, napi_callback_info info);
/* text.c: the policy loader's scans of a document's text before it is parsed. */
napi_value policy_text_scan(napi_env env, napi_callback_info info);

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

static instance_t* instance(napi_env env) {
  void* data = NULL;
  napi_get_instance_data(env, &data);
  return (instance_t*)data;
}

static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, void** data, size_t* len) {
  napi_typedarray_type type;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &type, len, data, &ab, &off) != napi_ok || type != want) return -1;
  return 0;
}

/*
 * Enter the network namespace at nsPath on this thread only; returns a
 * descriptor of the namespace to come back to with netns_leave, or -errno.
 * A tun descriptor belongs to the namespace it was opened in, which is where
 * TUNSETIFF finds its device; if_nametoindex looks where the thread is.
 */
static int netns_enter(const char* ns_path) {
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return -errno;
  int target = open(ns_path, O_RDONLY | O_CLOEXEC);
  if (target < 0 || setns(target, CLONE_NEWNET) < 0) {
    int e = errno;
    if (target >= 0) close(target);
    close(self);
    return -e;
  }
  close(target);
  return self;
}

static void netns_leave(int self) {
  if (setns(self, CLONE_NEWNET) < 0) abort(); /* this thread would stay in another namespace: nothing sane is left */
  close(self);
}

/* Run `open(path)` from inside the network namespace at nsPath (or here, for NULL); the descriptor or -errno. */
static int open_in_netns(const char* ns_path, const char* path, int flags) {
  int self = -1;
  if (ns_path && (self = netns_enter(ns_path)) < 0) return self;
  int fd = open(path, flags);
  if (fd < 0) fd = -errno;
  if (ns_path) netns_leave(self);
  return fd;
}

/* linkIndexIn(nsPath, name) -> the interface index of `name` in that network namespace, 0 if none, or -errno. */
static napi_value link_index_in(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char ns[4096], name[IFNAMSIZ] = {0};
  size_t n;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], ns, sizeof ns, &n) != napi_ok || napi_get_value_string_utf8(env, argv[1], name, sizeof name, &n) != napi_ok) {
    napi_throw_type_error(env, "EARGS", "linkIndexIn(nsPath, name)");
    return NULL;
  }
  int self = netns_enter(ns);
  if (self < 0) return make_int(env, self);
  int64_t index = (int64_t)if_nametoindex(name);
  netns_leave(self);
  return make_int(env, index);
}

/*
 * tapOpen(name, flags, ownerUid, nsPath?) -> [fd, actualName]; flags: 1 persist, 2 vnet header; ownerUid -1
 * for none; nsPath: attach to (or create) the TAP in that network namespace (a persistent TAP that a VM's
 * namespace holds, after a restart). Throws with errno on failure.
 */
static napi_value tap_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char name[IFNAMSIZ] = {0};
  size_t n;
  CHECK(napi_get_value_string_utf8(env, argv[0], name, sizeof name, &n));
  int32_t flags = 0, owner = -1;
  if (argc > 1) napi_get_value_int32(env, argv[1], &flags);
  if (argc > 2) napi_get_value_int32(env, argv[2], &owner);
  char ns[4096];
  const char* ns_path = NULL;
  napi_valuetype nt = napi_undefined;
  if (argc > 3) napi_typeof(env, argv[3], &nt);
  if (nt == napi_string) {
    size_t nl;
    CHECK(napi_get_value_string_utf8(env, argv[3], ns, sizeof ns, &nl));
    ns_path = ns;
  }
  int fd = open_in_netns(ns_path, "/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    char msg[4200];
    snprintf(msg, sizeof msg, "open /dev/net/tun%s%s: %s", ns_path ? " in " : "", ns_path ? ns_path : "", strerror(-fd));
    napi_throw_error(env, "ENODEV_TUN", msg);
    return NULL;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | ((flags & 2) ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name, n < IFNAMSIZ - 1 ? n : IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    char msg[160];
    snprintf(msg, sizeof msg, "TUNSETIFF %s: %s", name, strerror(e));
    napi_throw_error(env, e == EPERM ? "EPERM" : e == EBUSY ? "EBUSY" : "ETUNSETIFF", msg);
    return NULL;
  }
  /* With virtio-net headers, accept what a guest's NIC would: partial checksums and TSO segments. */
  if ((flags & 2) && ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)) < 0) {
    int e = errno;
    close(fd);
    char msg[160];
    snprintf(msg, sizeof msg, "TUNSETOFFLOAD %s: %s", name, strerror(e));
    napi_throw_error(env, "ETUNSETOFFLOAD", msg);
    return NULL;
  }
  if (owner >= 0 && ioctl(fd, TUNSETOWNER, (unsigned long)owner) < 0) {
    int e = errno;
    close(fd);
    char msg[160];
    snprintf(msg, sizeof msg, "TUNSETOWNER %s: %s", name, strerror(e));
    napi_throw_error(env, "ETUNSETOWNER", msg);
    return NULL;
  }
  if ((flags & 1) && ioctl(fd, TUNSETPERSIST, 1) < 0) {
    int e = errno;
    close(fd);
    char msg[160];
    snprintf(msg, sizeof msg, "TUNSETPERSIST %s: %s", name, strerror(e));
    napi_throw_error(env, "ETUNSETPERSIST", msg);
    return NULL;
  }
  napi_value arr, nm;
  CHECK(napi_create_array_with_length(env, 2, &arr));
  CHECK(napi_set_element(env, arr, 0, make_int(env, fd)));
  CHECK(napi_create_string_utf8(env, ifr.ifr_name, NAPI_AUTO_LENGTH, &nm));
  CHECK(napi_set_element(env, arr, 1, nm));
  return arr;
}

/* packetOpen(ifname, useRing, vnetHdr) -> fd: an AF_PACKET raw socket bound to the interface, not seeing its
 * own sends; with vnetHdr every frame in and out carries a virtio_net_hdr (segments and partial checksums pass). */
static napi_value packet_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool use_ring = true, vnet = false;
  if (argc > 1) napi_get_value_bool(env, argv[1], &use_ring);
  if (argc > 2) napi_get_value_bool(env, argv[2], &vnet);
  char name[IFNAMSIZ] = {0};
  size_t n;
  CHECK(napi_get_value_string_utf8(env, argv[0], name, sizeof name, &n));
  unsigned idx = if_nametoindex(name);
  if (idx == 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "no interface %s", name);
    napi_throw_error(env, "ENODEV", msg);
    return NULL;
  }
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
  if (fd < 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "AF_PACKET socket: %s", strerror(errno));
    napi_throw_error(env, errno == EPERM ? "EPERM" : "ESOCKET", msg);
    return NULL;
  }
  int one = 1;
  setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  /* A TPACKET_V3 receive ring where the kernel allows one (mode 1), else recvmmsg. */
  if (vnet && setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) {
    int e = errno;
    close(fd);
    char msg[128];
    snprintf(msg, sizeof msg, "PACKET_VNET_HDR on %s: %s", name, strerror(e));
    napi_throw_error(env, "EVNETHDR", msg);
    return NULL;
  }
  if (fd < MAX_RING_FD && use_ring) ring_setup(instance(env), fd, vnet ? (uint32_t)sizeof(struct virtio_net_hdr) : 0);
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)idx;
  if (bind(fd, (struct sockaddr*)&sll, sizeof sll) < 0) {
    int e = errno;
    close(fd);
    char msg[128];
    snprintf(msg, sizeof msg, "bind to %s: %s", name, strerror(e));
    napi_throw_error(env, "EBIND", msg);
    return NULL;
  }
  /* Frames queued before the bind may belong to any interface: drain them. */
  if (ring_of(instance(env), fd) == NULL) {
    char junk[2048];
    while (recv(fd, junk, sizeof junk, MSG_DONTWAIT) > 0) {}
  }
  return make_int(env, fd);
}

/* The arguments every batch call shares: (fd, kind, buf, offsets, lengths, count). */
typedef struct {
  int32_t fd, kind, count;
  uint8_t* buf;
  int32_t *offsets, *lengths;
  size_t buflen, noff, nlen;
} batch_args;

static int get_batch_args(napi_env env, napi_value* argv, batch_args* a, const char* usage) {
  napi_get_value_int32(env, argv[0], &a->fd);
  napi_get_value_int32(env, argv[1], &a->kind);
  if (get_typed(env, argv[2], napi_uint8_array, (void**)&a->buf, &a->buflen) ||
      get_typed(env, argv[3], napi_int32_array, (void**)&a->offsets, &a->noff) ||
      get_typed(env, argv[4], napi_int32_array, (void**)&a->lengths, &a->nlen)) {
    napi_throw_type_error(env, "EARGS", usage);
    return -1;
  }
  napi_get_value_int32(env, argv[5], &a->count);
  if (a->count < 0 || (size_t)a->count > a->noff || (size_t)a->count > a->nlen) {
    napi_throw_range_error(env, "ERANGE", "the batch does not fit the offset and length arrays");
    return -1;
  }
  if (a->count > MAX_BATCH) a->count = MAX_BATCH;
  return 0;
}

/* readBatch(fd, kind, buf, offsets, lengths, max, stride) -> frames read, or -errno */
static napi_value read_batch(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  batch_args a;
  if (get_batch_args(env, argv, &a, "readBatch(fd, kind, Uint8Array, Int32Array, Int32Array, max, stride)")) return NULL;
  int32_t stride;
  napi_get_value_int32(env, argv[6], &stride);
  if (stride <= 0 || (size_t)a.count * (size_t)stride > a.buflen) {
    napi_throw_range_error(env, "ERANGE", "readBatch: the batch does not fit the buffer");
    return NULL;
  }
  int32_t fd = a.fd, kind = a.kind, max = a.count;
  instance_t* in = instance(env);
  uint8_t* buf = a.buf;
  int32_t *offsets = a.offsets, *lengths = a.lengths;
  int got = 0;
  if (kind == KIND_TAP) {
    for (; got < max; got++) {
      int32_t off = got * stride;
      ssize_t r = read(fd, buf + off, (size_t)stride);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) { got--; continue; }
        return make_int(env, got > 0 ? got : -errno);
      }
      offsets[got] = off;
      lengths[got] = (int32_t)r;
    }
    return make_int(env, got);
  }
  ring_t* ring = ring_of(in, fd);
  if (ring != NULL) {
    /* The ring cannot report a vanished interface: ask the socket for a pending error. */
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err != 0) return make_int(env, -err);
    return make_int(env, ring_read(ring, buf, offsets, lengths, max, stride));
  }
  for (int i = 0; i < max; i++) msg_set(in, i, buf + (size_t)i * stride, (size_t)stride);
  int r = recvmmsg(fd, in->msgs, (unsigned)max, MSG_DONTWAIT, NULL);
  if (r < 0) return make_int(env, (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno);
  for (int i = 0; i < r; i++) {
    offsets[i] = i * stride;
    /* A frame longer than the slot is cut: report it as its true length so the caller drops it. */
    lengths[i] = (in->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? stride + 1 : (int32_t)in->msgs[i].msg_len;
  }
  return make_int(env, r);
}

/* writeBatch(fd, kind, buf, offsets, lengths, count) -> frames sent, or -errno */
static napi_value write_batch(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  batch_args a;
  if (get_batch_args(env, argv, &a, "writeBatch(fd, kind, Uint8Array, Int32Array, Int32Array, count)")) return NULL;
  int32_t fd = a.fd, kind = a.kind, count = a.count;
  uint8_t* buf = a.buf;
  size_t buflen = a.buflen;
  int32_t *offsets = a.offsets, *lengths = a.lengths;
  for (int i = 0; i < count; i++) {
    int32_t off = offsets[i], len = lengths[i];
    if (off < 0 || len < 0 || (size_t)off + (size_t)len > buflen) {
      napi_throw_range_error(env, "ERANGE", "writeBatch: a frame lies outside the buffer");
      return NULL;
    }
  }
  int sent = 0;
  if (kind == KIND_TAP) {
    for (; sent < count; sent++) {
      ssize_t r = write(fd, buf + offsets[sent], (size_t)lengths[sent]);
      if (r < 0) {
        if (errno == EINTR) { sent--; continue; }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return make_int(env, sent > 0 ? sent : -errno);
      }
    }
    return make_int(env, sent);
  }
  instance_t* in = instance(env);
  for (int i = 0; i < count; i++) msg_set(in, i, buf + offsets[i], (size_t)lengths[i]);
  int r = sendmmsg(fd, in->msgs, (unsigned)count, MSG_DONTWAIT);
  if (r < 0) return make_int(env, (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno);
  return make_int(env, r);
}

/* closeFd(fd) -> 0 or -errno */
static napi_value close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_get_value_int32(env, argv[0], &fd);
  instance_t* in = instance(env);
  ring_t* ring = ring_of(in, fd);
  if (ring != NULL) {
    munmap(ring->map, ring->map_len);
    free(ring);
    in->rings[fd] = NULL;
  }
  return make_int(env, close(fd) < 0 ? -errno : 0);
}

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  int closing;
} watch_t;

static void on_poll(uv_poll_t* handle, int status, int events) {
  watch_t* w = (watch_t*)handle->data;
  if (w->closing) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, recv, arg, result;
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &recv); /* make_callback wants an object as receiver */
  napi_create_int32(env, status < 0 ? status : events, &arg);
  napi_make_callback(env, w->async, recv, cb, 1, &arg, &result);
  napi_close_handle_scope(env, scope);
}

static void on_closed(uv_handle_t* handle) {
  free(handle->data);
}

/* watch(fd, callback) -> handle: callback(events) on the event loop (1 readable, < 0 error) */
static napi_value watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_get_value_int32(env, argv[0], &fd);
  struct uv_loop_s* loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  watch_t* w = calloc(1, sizeof *w);
  if (!w) {
    napi_throw_error(env, "ENOMEM", "watch: out of memory");
    return NULL;
  }
  w->env = env;
  CHECK(napi_create_reference(env, argv[1], 1, &w->callback));
  napi_value name;
  napi_create_string_utf8(env, "tapwall.watch", NAPI_AUTO_LENGTH, &name);
  CHECK(napi_async_init(env, NULL, name, &w->async));
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r == 0) {
    w->poll.data = w;
    r = uv_poll_start(&w->poll, UV_READABLE, on_poll);
  }
  if (r != 0) {
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async);
    free(w);
    napi_throw_error(env, "EWATCH", uv_strerror(r));
    return NULL;
  }
  napi_value ext;
  CHECK(napi_create_external(env, w, NULL, NULL, &ext));
  return ext;
}

/* unwatch(handle): stop watching; safe to call once per handle. */
static napi_value unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  watch_t* w;
  CHECK(napi_get_value_external(env, argv[0], (void**)&w));
  if (w && !w->closing) {
    w->closing = 1;
    uv_poll_stop(&w->poll);
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async);
    uv_close((uv_handle_t*)&w->poll, on_closed);
  }
  return NULL;
}

/* packetDrops(fd) -> frames the kernel dropped on this AF_PACKET socket since the last call (its ring or
 * buffer full), or -errno. PACKET_STATISTICS resets the kernel's counts when read. */
static napi_value packet_drops(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_get_value_int32(env, argv[0], &fd);
  struct tpacket_stats_v3 st; /* tp_drops is the second field in every version */
  memset(&st, 0, sizeof st);
  socklen_t len = sizeof st;
  if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0) return make_int(env, -errno);
  return make_int(env, st.tp_drops);
}

/* usesRing(fd) -> true when the descriptor reads through a TPACKET_V3 ring. */
static napi_value uses_ring(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_get_value_int32(env, argv[0], &fd);
  napi_get_boolean(env, ring_of(instance(env), fd) != NULL, &out);
  return out;
}

/* A shared file mapping ends with its last ArrayBuffer. */
static void map_finalize(napi_env env, void* data, void* hint) {
  munmap(data, (size_t)(uintptr_t)hint);
}

/*
 * mapFile(path, bytes) -> ArrayBuffer over a MAP_SHARED mapping of the file,
 * created (mode 0600) or truncated, its blocks reserved with posix_fallocate
 * first: a store into a sparse page of a full disk or tmpfs would kill the
 * process with SIGBUS, so a file that cannot be fully reserved is refused
 * here (the caller keeps its table in ordinary memory). Whatever is stored
 * in the buffer is in the file, also after the process is killed.
 */
static napi_value map_file(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char path[4096];
  size_t plen;
  double want;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &plen) != napi_ok || plen >= sizeof path - 1 ||
      napi_get_value_double(env, argv[1], &want) != napi_ok || !(want >= 1 && want <= (double)(1ULL << 40))) {
    napi_throw_type_error(env, "EARGS", "mapFile(path, bytes): a path and a size of 1 byte to 1 TiB");
    return NULL;
  }
  size_t bytes = (size_t)want;
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  char msg[4200];
  if (fd < 0) {
    snprintf(msg, sizeof msg, "%s: %s", path, strerror(errno));
    napi_throw_error(env, "EMAPFILE", msg);
    return NULL;
  }
  int r = posix_fallocate(fd, 0, (off_t)bytes);
  if (r != 0) {
    close(fd);
    snprintf(msg, sizeof msg, "%s: cannot reserve %zu bytes: %s", path, bytes, strerror(r));
    napi_throw_error(env, r == ENOSPC ? "ENOSPC" : "EMAPFILE", msg);
    return NULL;
  }
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    snprintf(msg, sizeof msg, "%s: mmap: %s", path, strerror(e));
    napi_throw_error(env, "EMAPFILE", msg);
    return NULL;
  }
  if (napi_create_external_arraybuffer(env, p, bytes, map_finalize, (void*)(uintptr_t)bytes, &out) != napi_ok) {
    munmap(p, bytes);
    napi_throw_error(env, "EMAPFILE", "mapFile: this Node.js does not allow external buffers");
    return NULL;
  }
  return out;
}

/*
 * dropPrivileges(uid, gid, keep[]) -> undefined; throws EPRIVDROP naming the
 * step that failed. Run as root, once the ports are open: every capability
 * not in `keep` leaves the bounding set (so nothing can bring it back), the
 * process becomes uid/gid with no supplementary groups, the calling thread
 * keeps exactly `keep` as its effective and permitted capabilities (the
 * ones opening a vNIC later needs: CAP_NET_RAW for AF_PACKET, CAP_NET_ADMIN
 * for TAP devices), and no_new_privs is set. Other threads of the process
 * (libuv's pool, the compiling worker) end with no capabilities at all:
 * capabilities are per thread, and only the calling thread asked to keep
 * them.
 */
static napi_value drop_privileges(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t uid, gid;
  uint32_t n = 0;
  bool is_array = false;
  if (argc < 3 || napi_get_value_int64(env, argv[0], &uid) != napi_ok || napi_get_value_int64(env, argv[1], &gid) != napi_ok ||
      napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &n) != napi_ok ||
      uid < 0 || gid < 0 || uid > 0xfffffffe || gid > 0xfffffffe) {
    napi_throw_type_error(env, "EARGS", "dropPrivileges(uid, gid, capabilities[])");
    return NULL;
  }
  uint64_t keep = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    int32_t cap;
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_int32(env, v, &cap) != napi_ok || cap < 0 || cap > 63) {
      napi_throw_type_error(env, "EARGS", "dropPrivileges: capabilities are numbers 0 to 63");
      return NULL;
    }
    keep |= 1ULL << cap;
  }
  char msg[256];
  const char* step = NULL;
  int e = 0;
  for (int cap = 0; cap <= 63 && step == NULL; cap++) {
    if (keep & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) { step = "PR_CAPBSET_DROP"; e = errno; }
  }
  if (!step && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) { step = "PR_SET_KEEPCAPS"; e = errno; }
  if (!step && setgroups(0, NULL) < 0) { step = "setgroups"; e = errno; }
  if (!step && setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0) { step = "setresgid"; e = errno; }
  if (!step && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0) { step = "setresuid"; e = errno; }
  if (!step) {
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (int cap = 0; cap <= 63; cap++) {
      if (!(keep & (1ULL << cap))) continue;
      data[cap / 32].effective |= 1U << (cap % 32);
      data[cap / 32].permitted |= 1U << (cap % 32);
    }
    if (syscall(SYS_capset, &hdr, data) < 0) { step = "capset"; e = errno; }
  }
  if (!step && prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0) { step = "PR_SET_KEEPCAPS off"; e = errno; }
  if (!step && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) { step = "PR_SET_NO_NEW_PRIVS"; e = errno; }
  if (step) {
    snprintf(msg, sizeof msg, "dropping privileges failed at %s: %s", step, strerror(e));
    napi_throw_error(env, "EPRIVDROP", msg);
  }
  return NULL;
}

/* The environment is going away: its rings are unmapped and its state freed. */
static void instance_free(napi_env env, void* data, void* hint) {
  instance_t* in = (instance_t*)data;
  for (int fd = 0; fd < MAX_RING_FD; fd++) {
    if (in->rings[fd] == NULL) continue;
    munmap(in->rings[fd]->map, in->rings[fd]->map_len);
    free(in->rings[fd]);
  }
  free(in);
}

/*
 * threadCpus(tid) -> number[]: the CPUs thread `tid` (0: the calling thread)
 * may run on; throws ECPUS on failure. threadCpusSet(tid, cpus[]) -> 0 or
 * -errno: restrict thread `tid` to those CPUs. Threads of this process only
 * (tids from /proc/self/task); no capability is needed for one's own
 * threads. The daemon keeps its forwarding thread's CPU for it alone
 * (src/util/placement.ts).
 */
static napi_value thread_cpus(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t tid = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_int32(env, argv[0], &tid) != napi_ok || tid < 0) {
    napi_throw_type_error(env, "EARGS", "threadCpus(tid)");
    return NULL;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity((pid_t)tid, sizeof set, &set) < 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "sched_getaffinity(%d): %s", tid, strerror(errno));
    napi_throw_error(env, "ECPUS", msg);
    return NULL;
  }
  napi_value out;
  CHECK(napi_create_array(env, &out));
  uint32_t k = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &set)) continue;
    CHECK(napi_set_element(env, out, k++, make_int(env, cpu)));
  }
  return out;
}

static napi_value thread_cpus_set(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t tid = 0;
  uint32_t n = 0;
  bool is_array = false;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || napi_get_value_int32(env, argv[0], &tid) != napi_ok || tid < 0 ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &n) != napi_ok || n == 0) {
    napi_throw_type_error(env, "EARGS", "threadCpusSet(tid, cpus[]) with at least one CPU");
    return NULL;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    int32_t cpu;
    if (napi_get_element(env, argv[1], i, &v) != napi_ok || napi_get_value_int32(env, v, &cpu) != napi_ok || cpu < 0 || cpu >= CPU_SETSIZE) {
      napi_throw_type_error(env, "EARGS", "threadCpusSet: CPUs are numbers 0 to 1023");
      return NULL;
    }
    CPU_SET(cpu, &set);
  }
  return make_int(env, sched_setaffinity((pid_t)tid, sizeof set, &set) < 0 ? -errno : 0);
}

/*
 * renameExchange(a, b) -> 0, or -errno: the two paths trade places in one
 * step (renameat2 RENAME_EXCHANGE, Linux 3.15; ext4, xfs, btrfs, tmpfs). A
 * small state file is replaced this way through a swap file kept beside it:
 * no inode made or freed while the caller waits, where a new file and a
 * rename took 0.6-1 ms of journal work on this machine's ext4. A file system
 * without it answers -EINVAL (or -ENOSYS on an old kernel).
 */
static napi_value rename_exchange(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char from[4096], to[4096];
  size_t flen, tlen;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], from, sizeof from, &flen) != napi_ok || flen >= sizeof from - 1 ||
      napi_get_value_string_utf8(env, argv[1], to, sizeof to, &tlen) != napi_ok || tlen >= sizeof to - 1) {
    napi_throw_type_error(env, "EARGS", "renameExchange(from, to): two paths");
    return NULL;
  }
  return make_int(env, syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, RENAME_EXCHANGE) < 0 ? -errno : 0);
}

static napi_value init(napi_env env, napi_value exports) {
  instance_t* in = calloc(1, sizeof *in);
  if (in == NULL) {
    napi_throw_error(env, "ENOMEM", "tapwall-native: out of memory");
    return NULL;
  }
  if (napi_set_instance_data(env, in, instance_free, NULL) != napi_ok) {
    free(in);
    napi_throw_error(env, "TAPWALL_NAPI", "tapwall-native: cannot keep its state");
    return NULL;
  }
  napi_property_descriptor props[] = {
    {"tapOpen", NULL, tap_open, NULL, NULL, NULL, napi_default, NULL},
    {"packetOpen", NULL, packet_open, NULL, NULL, NULL, napi_default, NULL},
    {"readBatch", NULL, read_batch, NULL, NULL, NULL, napi_default, NULL},
    {"writeBatch", NULL, write_batch, NULL, NULL, NULL, napi_default, NULL},
    {"closeFd", NULL, close_fd, NULL, NULL, NULL, napi_default, NULL},
    {"watch", NULL, watch, NULL, NULL, NULL, napi_default, NULL},
    {"unwatch", NULL, unwatch, NULL, NULL, NULL, napi_default, NULL},
    {"packetDrops", NULL, packet_drops, NULL, NULL, NULL, napi_default, NULL},
    {"usesRing", NULL, uses_ring, NULL, NULL, NULL, napi_default, NULL},
    {"mapFile", NULL, map_file, NULL, NULL, NULL, napi_default, NULL},
    {"linkIndexIn", NULL, link_index_in, NULL, NULL, NULL, napi_default, NULL},
    {"dropPrivileges", NULL, drop_privileges, NULL, NULL, NULL, napi_default, NULL},
    {"threadCpus", NULL, thread_cpus, NULL, NULL, NULL, napi_default, NULL},
    {"threadCpusSet", NULL, thread_cpus_set, NULL, NULL, NULL, napi_default, NULL},
    {"yamlToJson", NULL, yaml_to_json, NULL, NULL, NULL, napi_default, NULL},
    {"policyTextScan", NULL, policy_text_scan, NULL, NULL, NULL, napi_default, NULL},
    {"renameExchange", NULL, rename_exchange, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  /* The contract's numbers, for the TypeScript side to check against its own. */
  napi_value layout;
  napi_create_object(env, &layout);
  napi_set_named_property(env, layout, "maxBatch", make_int(env, MAX_BATCH));
  napi_set_named_property(env, layout, "kindTap", make_int(env, KIND_TAP));
  napi_set_named_property(env, layout, "kindPacket", make_int(env, KIND_PACKET));
  napi_set_named_property(env, layout, "enxio", make_int(env, ENXIO));
  napi_set_named_property(env, layout, "eio", make_int(env, EIO));
  napi_set_named_property(env, layout, "uvReadable", make_int(env, UV_READABLE));
  napi_set_named_property(env, layout, "vnetHdrSize", make_int(env, (int64_t)sizeof(struct virtio_net_hdr)));
  napi_set_named_property(env, exports, "layout", layout);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
