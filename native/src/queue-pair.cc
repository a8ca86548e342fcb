// Reliable-connected queue pairs: creation, the INIT -> RTR -> RTS walk for InfiniBand (LID) and
// RoCE (GID) addressing, RDMA WRITE / WRITE_WITH_IMM and posted receives for immediates.
#include <arpa/inet.h>

#include <cerrno>
#include <cstring>

#include "context.h"

namespace tandem {
namespace {

uint32_t Field(Napi::Object attrs, const char* name, uint32_t fallback) {
  Napi::Value value = attrs.Get(name);
  return value.IsNumber() ? value.As<Napi::Number>().Uint32Value() : fallback;
}

uint64_t Address(Napi::Env env, Napi::Value value) {
  if (!value.IsBigInt()) throw Napi::TypeError::New(env, "addresses are bigints");
  bool lossless = false;
  uint64_t address = value.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(env, "address out of range");
  return address;
}

const char* StateName(ibv_qp_state state) {
  switch (state) {
    case IBV_QPS_RESET: return "reset";
    case IBV_QPS_INIT: return "init";
    case IBV_QPS_RTR: return "rtr";
    case IBV_QPS_RTS: return "rts";
    case IBV_QPS_SQD: return "sqd";
    case IBV_QPS_SQE: return "sqe";
    case IBV_QPS_ERR: return "error";
    default: return "unknown";
  }
}

}  // namespace

ibv_qp* Context::FindQp(Napi::Env env, uint32_t qpn) const {
  EnsureOpen(env);
  auto found = qps_.find(qpn);
  if (found == qps_.end()) throw Napi::Error::New(env, "no queue pair " + std::to_string(qpn));
  return found->second;
}

// createQueuePair(sendWrMax, recvWrMax) -> qpn
Napi::Value Context::CreateQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureOpen(env);
  ibv_qp_init_attr init;
  std::memset(&init, 0, sizeof(init));
  init.send_cq = cq_;
  init.recv_cq = cq_;
  init.qp_type = IBV_QPT_RC;
  init.sq_sig_all = 0;
  init.cap.max_send_wr = info[0].As<Napi::Number>().Uint32Value();
  init.cap.max_recv_wr = info[1].As<Napi::Number>().Uint32Value();
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  ibv_qp* qp = Verbs()->create_qp(pd_, &init);
  if (qp == nullptr) ThrowErrno(env, "ibv_create_qp failed", errno);
  qps_[qp->qp_num] = qp;
  return Napi::Number::New(env, qp->qp_num);
}

// modifyQueuePair(qpn, 'init' | 'rtr' | 'rts' | 'error', attrs)
//   init: { port }
//   rtr:  { port, destQpn, rqPsn, mtu, lid } for InfiniBand, plus { gid, gidIndex } for RoCE / routed IB
//   rts:  { sqPsn, timeout?, retryCount?, rnrRetry? }
void Context::ModifyQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = FindQp(env, info[0].As<Napi::Number>().Uint32Value());
  std::string target = info[1].As<Napi::String>().Utf8Value();
  Napi::Object attrs = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
  ibv_qp_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  int mask = IBV_QP_STATE;
  if (target == "init") {
    attr.qp_state = IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = static_cast<uint8_t>(Field(attrs, "port", 1));
    attr.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    mask |= IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
  } else if (target == "rtr") {
    attr.qp_state = IBV_QPS_RTR;
    attr.path_mtu = static_cast<ibv_mtu>(Field(attrs, "mtu", IBV_MTU_1024));
    attr.dest_qp_num = Field(attrs, "destQpn", 0);
    attr.rq_psn = Field(attrs, "rqPsn", 0) & 0xffffff;
    attr.max_dest_rd_atomic = 1;
    attr.min_rnr_timer = 12;
    attr.ah_attr.port_num = static_cast<uint8_t>(Field(attrs, "port", 1));
    attr.ah_attr.dlid = static_cast<uint16_t>(Field(attrs, "lid", 0));
    attr.ah_attr.sl = 0;
    attr.ah_attr.src_path_bits = 0;
    Napi::Value gid = attrs.Get("gid");
    if (gid.IsBuffer()) {
      Napi::Buffer<uint8_t> bytes = gid.As<Napi::Buffer<uint8_t>>();
      if (bytes.Length() != sizeof(attr.ah_attr.grh.dgid.raw)) throw Napi::RangeError::New(env, "a GID is 16 bytes");
      attr.ah_attr.is_global = 1;
      std::memcpy(attr.ah_attr.grh.dgid.raw, bytes.Data(), bytes.Length());
      attr.ah_attr.grh.sgid_index = static_cast<uint8_t>(Field(attrs, "gidIndex", 0));
      attr.ah_attr.grh.hop_limit = 64;
      attr.ah_attr.grh.traffic_class = 0;
      attr.ah_attr.grh.flow_label = 0;
    }
    mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
  } else if (target == "rts") {
    attr.qp_state = IBV_QPS_RTS;
    attr.sq_psn = Field(attrs, "sqPsn", 0) & 0xffffff;
    attr.timeout = static_cast<uint8_t>(Field(attrs, "timeout", 14));
    attr.retry_cnt = static_cast<uint8_t>(Field(attrs, "retryCount", 7));
    attr.rnr_retry = static_cast<uint8_t>(Field(attrs, "rnrRetry", 7));
    attr.max_rd_atomic = 1;
    mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC;
  } else if (target == "error") {
    attr.qp_state = IBV_QPS_ERR;
  } else {
    throw Napi::RangeError::New(env, "unknown queue pair state " + target);
  }
  int error = Verbs()->modify_qp(qp, &attr, mask);
  if (error != 0) ThrowErrno(env, "ibv_modify_qp(" + std::to_string(qp->qp_num) + " -> " + target + ") failed", error);
}

// queuePairState(qpn) -> 'reset' | 'init' | 'rtr' | 'rts' | 'error' | ...
Napi::Value Context::QueuePairState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = FindQp(env, info[0].As<Napi::Number>().Uint32Value());
  ibv_qp_attr attr;
  ibv_qp_init_attr init;
  std::memset(&attr, 0, sizeof(attr));
  int error = Verbs()->query_qp(qp, &attr, IBV_QP_STATE, &init);
  if (error != 0) ThrowErrno(env, "ibv_query_qp failed", error);
  return Napi::String::New(env, StateName(attr.qp_state));
}

// destroyQueuePair(qpn)
void Context::DestroyQueuePair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t qpn = info[0].As<Napi::Number>().Uint32Value();
  ibv_qp* qp = FindQp(env, qpn);
  qps_.erase(qpn);
  int error = Verbs()->destroy_qp(qp);
  if (error != 0) ThrowErrno(env, "ibv_destroy_qp failed", error);
}

// postWrite(qpn, wrId, localAddress, length, lkey, remoteAddress, rkey, imm | null); always signaled.
void Context::PostWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = FindQp(env, info[0].As<Napi::Number>().Uint32Value());
  ibv_sge sge;
  sge.addr = Address(env, info[2]);
  sge.length = info[3].As<Napi::Number>().Uint32Value();
  sge.lkey = info[4].As<Napi::Number>().Uint32Value();
  ibv_send_wr wr;
  std::memset(&wr, 0, sizeof(wr));
  wr.wr_id = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
  wr.sg_list = sge.length > 0 ? &sge : nullptr;
  wr.num_sge = sge.length > 0 ? 1 : 0;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = Address(env, info[5]);
  wr.wr.rdma.rkey = info[6].As<Napi::Number>().Uint32Value();
  if (info[7].IsNumber()) {
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(info[7].As<Napi::Number>().Uint32Value());
  } else {
    wr.opcode = IBV_WR_RDMA_WRITE;
  }
  ibv_send_wr* bad = nullptr;
  int error = ibv_post_send(qp, &wr, &bad);
  if (error != 0) ThrowErrno(env, "ibv_post_send failed", error);
}

// postReceive(qpn, wrId): a receive without buffers, consumed by one WRITE_WITH_IMM.
void Context::PostReceive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ibv_qp* qp = FindQp(env, info[0].As<Napi::Number>().Uint32Value());
  ibv_recv_wr wr;
  std::memset(&wr, 0, sizeof(wr));
  wr.wr_id = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
  wr.sg_list = nullptr;
  wr.num_sge = 0;
  ibv_recv_wr* bad = nullptr;
  int error = ibv_post_recv(qp, &wr, &bad);
  if (error != 0) ThrowErrno(env, "ibv_post_recv failed", error);
}

}  // namespace tandem
