// A stand-in for libibverbs used only by tests: one fake device whose queue pairs loop back inside
// the process. RDMA WRITE copies into the target memory region, WRITE_WITH_IMM also consumes a
// posted receive on the peer queue pair and completes it with the immediate, and completion
// channels and the async event fd are pipes, so the addon's libuv polling runs unchanged.
#pragma once

#include <infiniband/verbs.h>

#include <deque>
#include <map>
#include <mutex>

namespace fake {

struct Channel {
  ibv_comp_channel channel;
  int writeFd;
};

struct Cq {
  ibv_cq cq;
  std::deque<ibv_wc> completions;
  bool armed = false;
  Channel* channel = nullptr;
};

struct Qp {
  ibv_qp qp;
  Cq* sendCq = nullptr;
  Cq* recvCq = nullptr;
  uint32_t destQpn = 0;
  int accessFlags = 0;
  bool global = false;
  std::deque<uint64_t> receives;
  // The send queue's depth (cap.max_send_wr) and the send work requests occupying it: posted and
  // not yet retired, i.e. their completions not yet polled. A full send queue refuses posts.
  uint32_t maxSendWr = 0;
  uint32_t sendsOutstanding = 0;
};

struct Context {
  ibv_context context;
  int asyncWriteFd;
  std::deque<ibv_async_event> events;
};

struct State {
  std::recursive_mutex mutex;
  std::map<uint32_t, Qp*> qps;
  std::map<uint32_t, ibv_mr*> mrs;
  std::map<ibv_context*, Context*> contexts;
  uint32_t nextQpn = 0x100;
  uint32_t nextKey = 0x1000;
  int deviceCount = 1;
  bool noKernelSupport = false;
  uint8_t linkLayer = IBV_LINK_LAYER_INFINIBAND;
  int failNextSendStatus = -1;
  bool failNextPoll = false;
  int failNextNotifyErrno = 0;
  bool nextChannelUnpollable = false;
};

State& state();

/** Queues `wc` on `cq` and, when the CQ is armed, wakes its completion channel. */
void Complete(Cq* cq, const ibv_wc& wc);

/** Moves `qp` to the error state and flushes its posted receives. */
void EnterError(Qp* qp);

/** Queues an async event on `qp`'s (or the given) context and wakes its async fd. */
void RaiseEvent(Context* context, const ibv_async_event& event);

int PostSend(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad);
int PostRecv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad);
int PollCq(ibv_cq* cq, int entries, ibv_wc* wc);
int ReqNotifyCq(ibv_cq* cq, int solicitedOnly);

}  // namespace fake
