// The fake's data path: the ops that verbs.h's inline ibv_post_send, ibv_post_recv, ibv_poll_cq
// and ibv_req_notify_cq call through, and the completion channel wake-ups.
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fake-verbs.h"

namespace fake {
namespace {

ibv_wc Completion(uint64_t wrId, ibv_wc_status status, ibv_wc_opcode opcode, uint32_t qpn) {
  ibv_wc wc;
  std::memset(&wc, 0, sizeof(wc));
  wc.wr_id = wrId;
  wc.status = status;
  wc.opcode = opcode;
  wc.qp_num = qpn;
  return wc;
}

// Executes one RDMA WRITE (WITH_IMM) on an RTS queue pair; returns the status the sender sees.
ibv_wc_status Execute(Qp* qp, const ibv_send_wr& wr) {
  State& s = state();
  auto peerEntry = s.qps.find(qp->destQpn);
  if (peerEntry == s.qps.end()) return IBV_WC_RETRY_EXC_ERR;
  Qp* peer = peerEntry->second;
  if (peer->qp.state != IBV_QPS_RTR && peer->qp.state != IBV_QPS_RTS) return IBV_WC_RETRY_EXC_ERR;
  if (peer->destQpn != qp->qp.qp_num) return IBV_WC_RETRY_EXC_ERR;
  size_t length = 0;
  for (int i = 0; i < wr.num_sge; i++) length += wr.sg_list[i].length;
  if (length > 0) {
    auto mrEntry = s.mrs.find(wr.wr.rdma.rkey);
    if (mrEntry == s.mrs.end()) return IBV_WC_REM_ACCESS_ERR;
    ibv_mr* mr = mrEntry->second;
    uintptr_t start = reinterpret_cast<uintptr_t>(mr->addr);
    if ((peer->accessFlags & IBV_ACCESS_REMOTE_WRITE) == 0 || mr->pd->context != peer->qp.context) return IBV_WC_REM_ACCESS_ERR;
    if (wr.wr.rdma.remote_addr < start || wr.wr.rdma.remote_addr + length > start + mr->length) return IBV_WC_REM_ACCESS_ERR;
  }
  if (wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM && peer->receives.empty()) return IBV_WC_RNR_RETRY_EXC_ERR;
  auto* target = reinterpret_cast<uint8_t*>(wr.wr.rdma.remote_addr);
  for (int i = 0; i < wr.num_sge; i++) {
    std::memcpy(target, reinterpret_cast<void*>(wr.sg_list[i].addr), wr.sg_list[i].length);
    target += wr.sg_list[i].length;
  }
  if (wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
    ibv_wc received = Completion(peer->receives.front(), IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM, peer->qp.qp_num);
    peer->receives.pop_front();
    received.wc_flags = IBV_WC_WITH_IMM;
    received.imm_data = wr.imm_data;
    received.byte_len = static_cast<uint32_t>(length);
    Complete(peer->recvCq, received);
  }
  return IBV_WC_SUCCESS;
}

}  // namespace

void Complete(Cq* cq, const ibv_wc& wc) {
  cq->completions.push_back(wc);
  if (cq->armed && cq->channel != nullptr) {
    cq->armed = false;
    ibv_cq* pointer = &cq->cq;
    ssize_t written = write(cq->channel->writeFd, &pointer, sizeof(pointer));
    (void)written;
  }
}

void EnterError(Qp* qp) {
  qp->qp.state = IBV_QPS_ERR;
  while (!qp->receives.empty()) {
    Complete(qp->recvCq, Completion(qp->receives.front(), IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, qp->qp.qp_num));
    qp->receives.pop_front();
  }
}

int PostSend(ibv_qp* base, ibv_send_wr* wr, ibv_send_wr** bad) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  Qp* qp = reinterpret_cast<Qp*>(base);
  for (; wr != nullptr; wr = wr->next) {
    if (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM) {
      *bad = wr;
      return EINVAL;
    }
    // As on hardware, a send queue holding max_send_wr unretired work requests takes no more.
    if (qp->sendsOutstanding >= qp->maxSendWr) {
      *bad = wr;
      return ENOMEM;
    }
    const bool signaled = (wr->send_flags & IBV_SEND_SIGNALED) != 0 || qp->qp.qp_type != IBV_QPT_RC;
    // Only a signaled request leaves a completion whose polling retires it.
    if (signaled) qp->sendsOutstanding++;
    if (qp->qp.state == IBV_QPS_ERR) {
      if (!signaled) qp->sendsOutstanding++;
      Complete(qp->sendCq, Completion(wr->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RDMA_WRITE, qp->qp.qp_num));
      continue;
    }
    if (qp->qp.state != IBV_QPS_RTS) {
      if (signaled) qp->sendsOutstanding--;
      *bad = wr;
      return EINVAL;
    }
    ibv_wc_status status;
    if (s.failNextSendStatus >= 0) {
      status = static_cast<ibv_wc_status>(s.failNextSendStatus);
      s.failNextSendStatus = -1;
    } else {
      status = Execute(qp, *wr);
    }
    if (status != IBV_WC_SUCCESS) {
      if (!signaled) qp->sendsOutstanding++;
      Complete(qp->sendCq, Completion(wr->wr_id, status, IBV_WC_RDMA_WRITE, qp->qp.qp_num));
      EnterError(qp);
    } else if (signaled) {
      Complete(qp->sendCq, Completion(wr->wr_id, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, qp->qp.qp_num));
    }
  }
  return 0;
}

int PostRecv(ibv_qp* base, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  Qp* qp = reinterpret_cast<Qp*>(base);
  for (; wr != nullptr; wr = wr->next) {
    if (qp->qp.state == IBV_QPS_RESET) {
      *bad = wr;
      return EINVAL;
    }
    if (qp->qp.state == IBV_QPS_ERR) {
      Complete(qp->recvCq, Completion(wr->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, qp->qp.qp_num));
      continue;
    }
    qp->receives.push_back(wr->wr_id);
  }
  return 0;
}

int PollCq(ibv_cq* base, int entries, ibv_wc* wc) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  Cq* cq = reinterpret_cast<Cq*>(base);
  if (s.failNextPoll) {
    s.failNextPoll = false;
    return -1;
  }
  int count = 0;
  while (count < entries && !cq->completions.empty()) {
    const ibv_wc& polled = cq->completions.front();
    // Polling a send completion retires its work request from the send queue.
    if (polled.opcode == IBV_WC_RDMA_WRITE) {
      auto found = s.qps.find(polled.qp_num);
      if (found != s.qps.end() && found->second->sendsOutstanding > 0) found->second->sendsOutstanding--;
    }
    wc[count++] = polled;
    cq->completions.pop_front();
  }
  return count;
}

int ReqNotifyCq(ibv_cq* base, int) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  Cq* cq = reinterpret_cast<Cq*>(base);
  if (s.failNextNotifyErrno != 0) {
    int error = s.failNextNotifyErrno;
    s.failNextNotifyErrno = 0;
    return error;
  }
  // As on a real CQ, only a completion added after arming wakes the channel.
  cq->armed = true;
  return 0;
}

}  // namespace fake
