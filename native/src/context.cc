#include "context.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

namespace tandem {
namespace {

const int kCompletionBatch = 64;

void SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void ClosePoll(uv_poll_t*& poll) {
  if (poll == nullptr) return;
  uv_poll_stop(poll);
  uv_close(reinterpret_cast<uv_handle_t*>(poll), [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
  poll = nullptr;
}

const char* OpcodeName(ibv_wc_opcode opcode) {
  switch (opcode) {
    case IBV_WC_RDMA_WRITE: return "write";
    case IBV_WC_RECV_RDMA_WITH_IMM: return "receive_immediate";
    case IBV_WC_RECV: return "receive";
    case IBV_WC_SEND: return "send";
    case IBV_WC_RDMA_READ: return "read";
    default: return "other";
  }
}

}  // namespace

void ThrowErrno(Napi::Env env, const std::string& what, int error) {
  Napi::Error failure = Napi::Error::New(env, what + ": " + std::strerror(error));
  failure.Set("errno", Napi::Number::New(env, error));
  throw failure;
}

Napi::Function Context::Define(Napi::Env env) {
  return DefineClass(env, "Context",
                     {
                         InstanceAccessor<&Context::DeviceName>("deviceName"),
                         InstanceMethod<&Context::QueryPortInfo>("queryPort"),
                         InstanceMethod<&Context::QueryGid>("queryGid"),
                         InstanceMethod<&Context::RegisterMemory>("registerMemory"),
                         InstanceMethod<&Context::DeregisterMemory>("deregisterMemory"),
                         InstanceMethod<&Context::CreateQueuePair>("createQueuePair"),
                         InstanceMethod<&Context::ModifyQueuePair>("modifyQueuePair"),
                         InstanceMethod<&Context::QueuePairState>("queuePairState"),
                         InstanceMethod<&Context::DestroyQueuePair>("destroyQueuePair"),
                         InstanceMethod<&Context::PostWrite>("postWrite"),
                         InstanceMethod<&Context::PostReceive>("postReceive"),
                         InstanceMethod<&Context::Start>("start"),
                         InstanceMethod<&Context::CloseMethod>("close"),
                     });
}

// new Context(deviceName, completionQueueEntries)
Context::Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  const VerbsApi* verbs = Verbs();
  if (verbs == nullptr) throw Napi::Error::New(env, "libibverbs is not loaded");
  deviceName_ = info[0].As<Napi::String>().Utf8Value();
  int cqEntries = info[1].As<Napi::Number>().Int32Value();
  int count = 0;
  errno = 0;
  ibv_device** devices = verbs->get_device_list(&count);
  if (devices == nullptr) ThrowErrno(env, "ibv_get_device_list failed", errno != 0 ? errno : ENODEV);
  ibv_device* device = nullptr;
  for (int i = 0; i < count; i++) {
    if (deviceName_ == verbs->get_device_name(devices[i])) device = devices[i];
  }
  if (device == nullptr) {
    verbs->free_device_list(devices);
    throw Napi::Error::New(env, "no RDMA device named " + deviceName_);
  }
  context_ = verbs->open_device(device);
  int openError = errno;
  verbs->free_device_list(devices);
  if (context_ == nullptr) ThrowErrno(env, "ibv_open_device(" + deviceName_ + ") failed", openError);
  try {
    pd_ = verbs->alloc_pd(context_);
    if (pd_ == nullptr) ThrowErrno(env, "ibv_alloc_pd failed", errno);
    channel_ = verbs->create_comp_channel(context_);
    if (channel_ == nullptr) ThrowErrno(env, "ibv_create_comp_channel failed", errno);
    cq_ = verbs->create_cq(context_, cqEntries, nullptr, channel_, 0);
    if (cq_ == nullptr) ThrowErrno(env, "ibv_create_cq failed", errno);
    int notifyError = ibv_req_notify_cq(cq_, 0);
    if (notifyError != 0) ThrowErrno(env, "ibv_req_notify_cq failed", notifyError);
    SetNonBlocking(channel_->fd);
    SetNonBlocking(context_->async_fd);
  } catch (...) {
    Close();
    throw;
  }
}

Context::~Context() { Close(); }

void Context::EnsureOpen(Napi::Env env) const {
  if (context_ == nullptr) throw Napi::Error::New(env, "the RDMA context is closed");
}

Napi::Value Context::DeviceName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), deviceName_); }

// queryPort(port) -> { state, lid, linkLayer, activeMtu, gidTableLength }
Napi::Value Context::QueryPortInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureOpen(env);
  uint32_t port = info[0].As<Napi::Number>().Uint32Value();
  ibv_port_attr attr;
  int error = QueryPort(context_, static_cast<uint8_t>(port), &attr);
  if (error != 0) ThrowErrno(env, "ibv_query_port(" + std::to_string(port) + ") failed", error);
  Napi::Object out = Napi::Object::New(env);
  out.Set("state", Napi::Number::New(env, attr.state));
  out.Set("lid", Napi::Number::New(env, attr.lid));
  out.Set("linkLayer", Napi::String::New(env, attr.link_layer == IBV_LINK_LAYER_ETHERNET ? "ethernet" : "infiniband"));
  out.Set("activeMtu", Napi::Number::New(env, attr.active_mtu));
  out.Set("gidTableLength", Napi::Number::New(env, attr.gid_tbl_len));
  return out;
}

// queryGid(port, index) -> Buffer of 16 bytes
Napi::Value Context::QueryGid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureOpen(env);
  uint32_t port = info[0].As<Napi::Number>().Uint32Value();
  int index = info[1].As<Napi::Number>().Int32Value();
  ibv_gid gid;
  int error = Verbs()->query_gid(context_, static_cast<uint8_t>(port), index, &gid);
  if (error != 0) ThrowErrno(env, "ibv_query_gid(" + std::to_string(port) + ", " + std::to_string(index) + ") failed", error != -1 ? error : errno);
  return Napi::Buffer<uint8_t>::Copy(env, gid.raw, sizeof(gid.raw));
}

// registerMemory(byteLength) -> { id, buffer, address, lkey, rkey }
Napi::Value Context::RegisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureOpen(env);
  size_t byteLength = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
  if (byteLength == 0) throw Napi::RangeError::New(env, "cannot register zero bytes");
  void* data = nullptr;
  if (posix_memalign(&data, 4096, byteLength) != 0) ThrowErrno(env, "cannot allocate " + std::to_string(byteLength) + " bytes", ENOMEM);
  std::memset(data, 0, byteLength);
  int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  ibv_mr* mr = Verbs()->reg_mr(pd_, data, byteLength, access);
  if (mr == nullptr) {
    int error = errno;
    std::free(data);
    ThrowErrno(env, "ibv_reg_mr of " + std::to_string(byteLength) + " bytes failed (check the memlock limit, ulimit -l)", error);
  }
  auto record = std::make_shared<MemoryRecord>();
  record->data = data;
  record->byteLength = byteLength;
  record->mr = mr;
  uint32_t id = nextMemoryId_++;
  memory_[id] = record;
  // The finalizer keeps its own reference: the bytes stay valid while JS can reach them, and a
  // registration still in place when they are collected is removed before they are freed.
  auto* hint = new std::shared_ptr<MemoryRecord>(record);
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, data, byteLength,
      [](Napi::Env, void*, std::shared_ptr<MemoryRecord>* held) {
        MemoryRecord& rec = **held;
        if (rec.mr != nullptr && Verbs() != nullptr) Verbs()->dereg_mr(rec.mr);
        rec.mr = nullptr;
        std::free(rec.data);
        rec.data = nullptr;
        delete held;
      },
      hint);
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, id));
  out.Set("buffer", buffer);
  out.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data))));
  out.Set("lkey", Napi::Number::New(env, mr->lkey));
  out.Set("rkey", Napi::Number::New(env, mr->rkey));
  return out;
}

// deregisterMemory(id): the registration ends; the bytes live on until the ArrayBuffer is collected.
void Context::DeregisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  auto found = memory_.find(id);
  if (found == memory_.end()) return;
  std::shared_ptr<MemoryRecord> record = found->second;
  memory_.erase(found);
  if (record->mr != nullptr) {
    int error = Verbs()->dereg_mr(record->mr);
    record->mr = nullptr;
    if (error != 0) ThrowErrno(env, "ibv_dereg_mr failed", error);
  }
}

// start(onCompletions, onAsyncEvent): watches the completion channel and the async event fd.
void Context::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureOpen(env);
  if (started_) throw Napi::Error::New(env, "the RDMA context is already started");
  onCompletions_ = Napi::Persistent(info[0].As<Napi::Function>());
  onAsyncEvent_ = Napi::Persistent(info[1].As<Napi::Function>());
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "tandem.verbs");
  // On failure nothing stays half-started: a poll handle is stored only once uv_poll_init has
  // succeeded, so ClosePoll never uv_closes an uninitialised handle.
  auto fail = [&](const std::string& what, int error) {
    ClosePoll(channelPoll_);
    ClosePoll(asyncPoll_);
    onCompletions_.Reset();
    onAsyncEvent_.Reset();
    ThrowErrno(env, what, error);
  };
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) fail("napi_get_uv_event_loop failed", EINVAL);
  auto initPoll = [&](uv_poll_t*& slot, int fd, const char* what) {
    auto handle = std::make_unique<uv_poll_t>();
    int error = uv_poll_init(loop, handle.get(), fd);
    if (error != 0) fail(std::string("uv_poll_init(") + what + ") failed", -error);
    handle->data = this;
    slot = handle.release();
  };
  initPoll(channelPoll_, channel_->fd, "completion channel");
  initPoll(asyncPoll_, context_->async_fd, "async event fd");
  int error = uv_poll_start(channelPoll_, UV_READABLE, PollCallback);
  if (error != 0) fail("uv_poll_start(completion channel) failed", -error);
  error = uv_poll_start(asyncPoll_, UV_READABLE, PollCallback);
  if (error != 0) fail("uv_poll_start(async event fd) failed", -error);
  // Open connections keep the process alive through their sockets; an idle device does not.
  uv_unref(reinterpret_cast<uv_handle_t*>(channelPoll_));
  uv_unref(reinterpret_cast<uv_handle_t*>(asyncPoll_));
  Ref();
  started_ = true;
}

void Context::PollCallback(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<Context*>(handle->data);
  if (self->context_ == nullptr) return;
  if (status < 0) {
    // The fd is unusable; stop watching it rather than be called back in a loop.
    uv_poll_stop(handle);
    return;
  }
  if (handle == self->channelPoll_) self->OnCompletionChannel();
  else if (handle == self->asyncPoll_) self->OnAsyncEvent();
}

void Context::Deliver(Napi::FunctionReference& fn, Napi::Value value) {
  try {
    fn.MakeCallback(Value(), {value}, *asyncContext_);
  } catch (const Napi::Error& error) {
    napi_fatal_exception(env_, error.Value());
  }
}

void Context::OnCompletionChannel() {
  const VerbsApi* verbs = Verbs();
  ibv_cq* cq = nullptr;
  void* cqContext = nullptr;
  unsigned int events = 0;
  while (verbs->get_cq_event(channel_, &cq, &cqContext) == 0) events++;
  if (events > 0) verbs->ack_cq_events(cq_, events);
  // A CQ that cannot be re-armed or polled loses completions silently; JS hears of it as a CQ
  // error event, which fails every connection using this CQ, once the polled ones are delivered.
  std::string cqFailure;
  int notifyError = ibv_req_notify_cq(cq_, 0);
  if (notifyError != 0) cqFailure = std::string("ibv_req_notify_cq failed: ") + std::strerror(notifyError);
  Napi::HandleScope scope(env_);
  Napi::Array out = Napi::Array::New(env_);
  uint32_t count = 0;
  ibv_wc wcs[kCompletionBatch];
  for (;;) {
    int polled = ibv_poll_cq(cq_, kCompletionBatch, wcs);
    if (polled < 0) {
      if (cqFailure.empty()) cqFailure = "ibv_poll_cq failed (" + std::to_string(polled) + ")";
      break;
    }
    if (polled == 0) break;
    for (int i = 0; i < polled; i++) {
      const ibv_wc& wc = wcs[i];
      Napi::Object item = Napi::Object::New(env_);
      item.Set("wrId", Napi::Number::New(env_, static_cast<double>(wc.wr_id)));
      item.Set("status", Napi::Number::New(env_, wc.status));
      item.Set("statusName", Napi::String::New(env_, verbs->wc_status_str(wc.status)));
      item.Set("qpn", Napi::Number::New(env_, wc.qp_num));
      item.Set("vendorError", Napi::Number::New(env_, wc.vendor_err));
      if (wc.status == IBV_WC_SUCCESS) {
        item.Set("opcode", Napi::String::New(env_, OpcodeName(wc.opcode)));
        item.Set("byteLength", Napi::Number::New(env_, wc.byte_len));
        if ((wc.wc_flags & IBV_WC_WITH_IMM) != 0) item.Set("imm", Napi::Number::New(env_, ntohl(wc.imm_data)));
      }
      out.Set(count++, item);
    }
    if (polled < kCompletionBatch) break;
  }
  if (count > 0) Deliver(onCompletions_, out);
  // Delivering may have closed the context, and with it every connection.
  if (!cqFailure.empty() && context_ != nullptr) {
    Napi::Object item = Napi::Object::New(env_);
    item.Set("type", Napi::Number::New(env_, IBV_EVENT_CQ_ERR));
    item.Set("typeName", Napi::String::New(env_, "CQ error: " + cqFailure));
    Deliver(onAsyncEvent_, item);
  }
}

void Context::OnAsyncEvent() {
  const VerbsApi* verbs = Verbs();
  Napi::HandleScope scope(env_);
  ibv_async_event event;
  while (context_ != nullptr && verbs->get_async_event(context_, &event) == 0) {
    Napi::Object item = Napi::Object::New(env_);
    item.Set("type", Napi::Number::New(env_, event.event_type));
    item.Set("typeName", Napi::String::New(env_, verbs->event_type_str(event.event_type)));
    switch (event.event_type) {
      case IBV_EVENT_QP_FATAL:
      case IBV_EVENT_QP_REQ_ERR:
      case IBV_EVENT_QP_ACCESS_ERR:
      case IBV_EVENT_COMM_EST:
      case IBV_EVENT_SQ_DRAINED:
      case IBV_EVENT_PATH_MIG:
      case IBV_EVENT_PATH_MIG_ERR:
      case IBV_EVENT_QP_LAST_WQE_REACHED:
        item.Set("qpn", Napi::Number::New(env_, event.element.qp->qp_num));
        break;
      case IBV_EVENT_PORT_ACTIVE:
      case IBV_EVENT_PORT_ERR:
      case IBV_EVENT_LID_CHANGE:
      case IBV_EVENT_PKEY_CHANGE:
      case IBV_EVENT_SM_CHANGE:
      case IBV_EVENT_CLIENT_REREGISTER:
      case IBV_EVENT_GID_CHANGE:
        item.Set("port", Napi::Number::New(env_, event.element.port_num));
        break;
      default:
        break;
    }
    verbs->ack_async_event(&event);
    Deliver(onAsyncEvent_, item);
  }
}

void Context::CloseMethod(const Napi::CallbackInfo&) { Close(); }

// Teardown in the order verbs requires: nothing watches the fds, then queue pairs, memory
// registrations, the completion queue, its channel, the protection domain and the device.
void Context::Close() {
  if (context_ == nullptr) return;
  const VerbsApi* verbs = Verbs();
  ClosePoll(channelPoll_);
  ClosePoll(asyncPoll_);
  for (auto& [qpn, qp] : qps_) verbs->destroy_qp(qp);
  qps_.clear();
  for (auto& [id, record] : memory_) {
    if (record->mr != nullptr) verbs->dereg_mr(record->mr);
    record->mr = nullptr;
  }
  memory_.clear();
  if (cq_ != nullptr) verbs->destroy_cq(cq_);
  cq_ = nullptr;
  if (channel_ != nullptr) verbs->destroy_comp_channel(channel_);
  channel_ = nullptr;
  if (pd_ != nullptr) verbs->dealloc_pd(pd_);
  pd_ = nullptr;
  verbs->close_device(context_);
  context_ = nullptr;
  if (started_) {
    started_ = false;
    onCompletions_.Reset();
    onAsyncEvent_.Reset();
    // The async context stays until the object is collected: Close may run inside its callback.
    Unref();
  }
}

}  // namespace tandem
