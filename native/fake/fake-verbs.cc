// The fake's control path: the exported ibv_* functions the addon resolves with dlsym, and the
// test hook tandem_fake_verbs_control.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fake-verbs.h"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

// verbs.h wraps these in macros; the fake defines the exported functions themselves.
#undef ibv_reg_mr
#undef ibv_query_port

namespace fake {

State& state() {
  static State instance;
  return instance;
}

void RaiseEvent(Context* context, const ibv_async_event& event) {
  context->events.push_back(event);
  char byte = 1;
  ssize_t written = write(context->asyncWriteFd, &byte, 1);
  (void)written;
}

}  // namespace fake

using fake::state;

namespace {

ibv_device fakeDevice;
ibv_device* deviceList[2] = {&fakeDevice, nullptr};

bool MakePipe(int fds[2]) {
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  return true;
}

// The masks the verbs specification requires for each RC transition.
const int kInitMask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
const int kRtrMask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
const int kRtsMask = IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC;

}  // namespace

FAKE_EXPORT ibv_device** ibv_get_device_list(int* count) {
  fake::State& s = state();
  if (s.noKernelSupport) {
    errno = ENOSYS;
    return nullptr;
  }
  std::strcpy(fakeDevice.name, "fake0");
  std::strcpy(fakeDevice.dev_name, "uverbs-fake0");
  fakeDevice.node_type = IBV_NODE_CA;
  fakeDevice.transport_type = IBV_TRANSPORT_IB;
  auto** list = static_cast<ibv_device**>(std::calloc(2, sizeof(ibv_device*)));
  if (s.deviceCount > 0) list[0] = deviceList[0];
  if (count != nullptr) *count = s.deviceCount > 0 ? 1 : 0;
  return list;
}

FAKE_EXPORT void ibv_free_device_list(ibv_device** list) { std::free(list); }

FAKE_EXPORT const char* ibv_get_device_name(ibv_device* device) { return device->name; }

FAKE_EXPORT __be64 ibv_get_device_guid(ibv_device*) { return htobe64(0x0002c90300fa4e00ULL); }

FAKE_EXPORT ibv_context* ibv_open_device(ibv_device* device) {
  auto* context = new fake::Context();
  std::memset(&context->context, 0, sizeof(context->context));
  int fds[2];
  if (!MakePipe(fds)) {
    delete context;
    return nullptr;
  }
  context->context.device = device;
  context->context.async_fd = fds[0];
  context->asyncWriteFd = fds[1];
  context->context.num_comp_vectors = 1;
  context->context.abi_compat = nullptr;
  context->context.ops.post_send = fake::PostSend;
  context->context.ops.post_recv = fake::PostRecv;
  context->context.ops.poll_cq = fake::PollCq;
  context->context.ops.req_notify_cq = fake::ReqNotifyCq;
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  state().contexts[&context->context] = context;
  return &context->context;
}

FAKE_EXPORT int ibv_close_device(ibv_context* base) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto found = state().contexts.find(base);
  if (found == state().contexts.end()) return EINVAL;
  fake::Context* context = found->second;
  state().contexts.erase(found);
  close(context->context.async_fd);
  close(context->asyncWriteFd);
  delete context;
  return 0;
}

// Fills the fields up to link_layer, the part the exported (compat) layout shares with ibv_port_attr.
FAKE_EXPORT int ibv_query_port(ibv_context*, uint8_t port, _compat_ibv_port_attr* compat) {
  auto* attr = reinterpret_cast<ibv_port_attr*>(compat);
  if (port != 1) return EINVAL;
  attr->state = IBV_PORT_ACTIVE;
  attr->max_mtu = IBV_MTU_4096;
  attr->active_mtu = IBV_MTU_4096;
  attr->gid_tbl_len = 4;
  attr->lid = state().linkLayer == IBV_LINK_LAYER_INFINIBAND ? 7 : 0;
  attr->link_layer = state().linkLayer;
  return 0;
}

FAKE_EXPORT int ibv_query_gid(ibv_context*, uint8_t port, int index, ibv_gid* gid) {
  if (port != 1 || index < 0 || index >= 4) return EINVAL;
  std::memset(gid->raw, 0, sizeof(gid->raw));
  gid->raw[0] = 0xfe;
  gid->raw[1] = 0x80;
  gid->raw[15] = static_cast<uint8_t>(index + 1);
  return 0;
}

FAKE_EXPORT ibv_pd* ibv_alloc_pd(ibv_context* context) {
  auto* pd = new ibv_pd();
  pd->context = context;
  return pd;
}

FAKE_EXPORT int ibv_dealloc_pd(ibv_pd* pd) {
  delete pd;
  return 0;
}

FAKE_EXPORT ibv_mr* ibv_reg_mr(ibv_pd* pd, void* addr, size_t length, int access) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto* mr = new ibv_mr();
  mr->context = pd->context;
  mr->pd = pd;
  mr->addr = addr;
  mr->length = length;
  mr->lkey = state().nextKey++;
  mr->rkey = (access & IBV_ACCESS_REMOTE_WRITE) != 0 ? state().nextKey++ : 0;
  if (mr->rkey != 0) state().mrs[mr->rkey] = mr;
  return mr;
}

FAKE_EXPORT int ibv_dereg_mr(ibv_mr* mr) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  state().mrs.erase(mr->rkey);
  delete mr;
  return 0;
}

FAKE_EXPORT ibv_comp_channel* ibv_create_comp_channel(ibv_context* context) {
  int fds[2];
  if (!MakePipe(fds)) return nullptr;
  {
    std::lock_guard<std::recursive_mutex> lock(state().mutex);
    if (state().nextChannelUnpollable) {
      // epoll refuses /dev/null (EPERM), so the addon's uv_poll_init of this channel fails.
      state().nextChannelUnpollable = false;
      close(fds[0]);
      fds[0] = open("/dev/null", O_RDONLY);
    }
  }
  auto* channel = new fake::Channel();
  channel->channel.context = context;
  channel->channel.fd = fds[0];
  channel->writeFd = fds[1];
  return &channel->channel;
}

FAKE_EXPORT int ibv_destroy_comp_channel(ibv_comp_channel* base) {
  auto* channel = reinterpret_cast<fake::Channel*>(base);
  close(channel->channel.fd);
  close(channel->writeFd);
  delete channel;
  return 0;
}

FAKE_EXPORT ibv_cq* ibv_create_cq(ibv_context* context, int cqe, void* cqContext, ibv_comp_channel* channel, int) {
  auto* cq = new fake::Cq();
  cq->cq.context = context;
  cq->cq.channel = channel;
  cq->cq.cq_context = cqContext;
  cq->cq.cqe = cqe;
  cq->channel = reinterpret_cast<fake::Channel*>(channel);
  return &cq->cq;
}

FAKE_EXPORT int ibv_destroy_cq(ibv_cq* cq) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  delete reinterpret_cast<fake::Cq*>(cq);
  return 0;
}

FAKE_EXPORT int ibv_get_cq_event(ibv_comp_channel* channel, ibv_cq** cq, void** cqContext) {
  ibv_cq* pointer = nullptr;
  ssize_t got = read(channel->fd, &pointer, sizeof(pointer));
  if (got != sizeof(pointer)) {
    errno = got < 0 ? errno : EAGAIN;
    return -1;
  }
  *cq = pointer;
  *cqContext = pointer->cq_context;
  return 0;
}

FAKE_EXPORT void ibv_ack_cq_events(ibv_cq*, unsigned int) {}

FAKE_EXPORT ibv_qp* ibv_create_qp(ibv_pd* pd, ibv_qp_init_attr* init) {
  if (init->qp_type != IBV_QPT_RC || init->send_cq == nullptr || init->recv_cq == nullptr) {
    errno = EINVAL;
    return nullptr;
  }
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto* qp = new fake::Qp();
  qp->qp.context = pd->context;
  qp->qp.pd = pd;
  qp->qp.send_cq = init->send_cq;
  qp->qp.recv_cq = init->recv_cq;
  qp->qp.qp_type = init->qp_type;
  qp->qp.state = IBV_QPS_RESET;
  qp->qp.qp_num = state().nextQpn++;
  qp->maxSendWr = init->cap.max_send_wr;
  qp->sendCq = reinterpret_cast<fake::Cq*>(init->send_cq);
  qp->recvCq = reinterpret_cast<fake::Cq*>(init->recv_cq);
  state().qps[qp->qp.qp_num] = qp;
  return &qp->qp;
}

FAKE_EXPORT int ibv_modify_qp(ibv_qp* base, ibv_qp_attr* attr, int mask) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto* qp = reinterpret_cast<fake::Qp*>(base);
  if ((mask & IBV_QP_STATE) == 0) return EINVAL;
  ibv_qp_state from = qp->qp.state;
  ibv_qp_state to = attr->qp_state;
  if (to == IBV_QPS_ERR) {
    fake::EnterError(qp);
    return 0;
  }
  if (to == IBV_QPS_RESET) {
    qp->receives.clear();
    qp->qp.state = IBV_QPS_RESET;
    return 0;
  }
  if (to == IBV_QPS_INIT && from == IBV_QPS_RESET) {
    if ((mask & kInitMask) != kInitMask || attr->port_num != 1) return EINVAL;
    qp->accessFlags = attr->qp_access_flags;
  } else if (to == IBV_QPS_RTR && from == IBV_QPS_INIT) {
    if ((mask & kRtrMask) != kRtrMask || attr->dest_qp_num == 0) return EINVAL;
    // RoCE has no LIDs: its address vector must carry the peer's GID.
    if (state().linkLayer == IBV_LINK_LAYER_ETHERNET && attr->ah_attr.is_global == 0) return EINVAL;
    if (state().linkLayer == IBV_LINK_LAYER_INFINIBAND && attr->ah_attr.is_global == 0 && attr->ah_attr.dlid == 0) return EINVAL;
    qp->destQpn = attr->dest_qp_num;
    qp->global = attr->ah_attr.is_global != 0;
  } else if (to == IBV_QPS_RTS && from == IBV_QPS_RTR) {
    if ((mask & kRtsMask) != kRtsMask) return EINVAL;
  } else {
    return EINVAL;
  }
  qp->qp.state = to;
  return 0;
}

FAKE_EXPORT int ibv_query_qp(ibv_qp* base, ibv_qp_attr* attr, int, ibv_qp_init_attr*) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto* qp = reinterpret_cast<fake::Qp*>(base);
  attr->qp_state = qp->qp.state;
  attr->cur_qp_state = qp->qp.state;
  attr->dest_qp_num = qp->destQpn;
  return 0;
}

FAKE_EXPORT int ibv_destroy_qp(ibv_qp* base) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto* qp = reinterpret_cast<fake::Qp*>(base);
  state().qps.erase(qp->qp.qp_num);
  delete qp;
  return 0;
}

FAKE_EXPORT int ibv_get_async_event(ibv_context* base, ibv_async_event* event) {
  std::lock_guard<std::recursive_mutex> lock(state().mutex);
  auto found = state().contexts.find(base);
  if (found == state().contexts.end()) {
    errno = EINVAL;
    return -1;
  }
  fake::Context* context = found->second;
  char byte;
  if (read(context->context.async_fd, &byte, 1) != 1 || context->events.empty()) {
    errno = EAGAIN;
    return -1;
  }
  *event = context->events.front();
  context->events.pop_front();
  return 0;
}

FAKE_EXPORT void ibv_ack_async_event(ibv_async_event*) {}

FAKE_EXPORT const char* ibv_wc_status_str(ibv_wc_status status) {
  switch (status) {
    case IBV_WC_SUCCESS: return "success";
    case IBV_WC_LOC_LEN_ERR: return "local length error";
    case IBV_WC_LOC_PROT_ERR: return "local protection error";
    case IBV_WC_WR_FLUSH_ERR: return "Work Request Flushed Error";
    case IBV_WC_REM_ACCESS_ERR: return "remote access error";
    case IBV_WC_RETRY_EXC_ERR: return "transport retry counter exceeded";
    case IBV_WC_RNR_RETRY_EXC_ERR: return "RNR retry counter exceeded";
    default: return "unknown";
  }
}

FAKE_EXPORT const char* ibv_event_type_str(ibv_event_type event) {
  switch (event) {
    case IBV_EVENT_QP_FATAL: return "local work queue catastrophic error";
    case IBV_EVENT_PORT_ERR: return "port error";
    case IBV_EVENT_PORT_ACTIVE: return "port active";
    default: return "unknown";
  }
}

// Test controls: device_count n, no_kernel_support 0|1, link_layer 1 (IB) | 2 (Ethernet),
// fail_next_send <ibv_wc_status>, fail_next_poll 0|1 (ibv_poll_cq returns -1 once),
// fail_next_notify <errno> (ibv_req_notify_cq fails once), qp_fatal <qpn>, port_error <port>,
// unpollable_channel 0|1 (the next completion channel's fd cannot be polled), live_qps -> count.
FAKE_EXPORT int tandem_fake_verbs_control(const char* command, long long value) {
  fake::State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  std::string name(command);
  if (name == "device_count") {
    s.deviceCount = static_cast<int>(value);
  } else if (name == "no_kernel_support") {
    s.noKernelSupport = value != 0;
  } else if (name == "link_layer") {
    s.linkLayer = static_cast<uint8_t>(value);
  } else if (name == "fail_next_send") {
    s.failNextSendStatus = static_cast<int>(value);
  } else if (name == "fail_next_poll") {
    s.failNextPoll = value != 0;
  } else if (name == "fail_next_notify") {
    s.failNextNotifyErrno = static_cast<int>(value);
  } else if (name == "unpollable_channel") {
    s.nextChannelUnpollable = value != 0;
  } else if (name == "qp_fatal") {
    auto found = s.qps.find(static_cast<uint32_t>(value));
    if (found == s.qps.end()) return -1;
    fake::Qp* qp = found->second;
    fake::EnterError(qp);
    ibv_async_event event;
    std::memset(&event, 0, sizeof(event));
    event.event_type = IBV_EVENT_QP_FATAL;
    event.element.qp = &qp->qp;
    fake::RaiseEvent(s.contexts.at(qp->qp.context), event);
  } else if (name == "port_error") {
    ibv_async_event event;
    std::memset(&event, 0, sizeof(event));
    event.event_type = IBV_EVENT_PORT_ERR;
    event.element.port_num = static_cast<int>(value);
    for (auto& [base, context] : s.contexts) fake::RaiseEvent(context, event);
  } else if (name == "live_qps") {
    return static_cast<int>(s.qps.size());
  } else {
    return -1;
  }
  return 0;
}
