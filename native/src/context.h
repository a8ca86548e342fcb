// One opened RDMA device: its protection domain, one completion queue with a completion channel
// watched by libuv, the queue pairs and memory regions created on it, and its async events.
#pragma once

#include <napi.h>
#include <uv.h>

#include <map>
#include <memory>
#include <string>

#include "verbs-api.h"

namespace tandem {

/** Registered memory; the bytes outlive the registration until JS drops the ArrayBuffer. */
struct MemoryRecord {
  void* data = nullptr;
  size_t byteLength = 0;
  ibv_mr* mr = nullptr;
};

class Context : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Context(const Napi::CallbackInfo& info);
  ~Context() override;

 private:
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value QueryPortInfo(const Napi::CallbackInfo& info);
  Napi::Value QueryGid(const Napi::CallbackInfo& info);
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info);
  void DeregisterMemory(const Napi::CallbackInfo& info);
  Napi::Value CreateQueuePair(const Napi::CallbackInfo& info);
  void ModifyQueuePair(const Napi::CallbackInfo& info);
  Napi::Value QueuePairState(const Napi::CallbackInfo& info);
  void DestroyQueuePair(const Napi::CallbackInfo& info);
  void PostWrite(const Napi::CallbackInfo& info);
  void PostReceive(const Napi::CallbackInfo& info);
  void Start(const Napi::CallbackInfo& info);
  void CloseMethod(const Napi::CallbackInfo& info);

  void Close();
  void EnsureOpen(Napi::Env env) const;
  ibv_qp* FindQp(Napi::Env env, uint32_t qpn) const;
  void OnCompletionChannel();
  void OnAsyncEvent();
  void Deliver(Napi::FunctionReference& fn, Napi::Value value);

  static void PollCallback(uv_poll_t* handle, int status, int events);

  Napi::Env env_;
  std::string deviceName_;
  ibv_context* context_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  std::map<uint32_t, ibv_qp*> qps_;
  std::map<uint32_t, std::shared_ptr<MemoryRecord>> memory_;
  uint32_t nextMemoryId_ = 1;
  uv_poll_t* channelPoll_ = nullptr;
  uv_poll_t* asyncPoll_ = nullptr;
  Napi::FunctionReference onCompletions_;
  Napi::FunctionReference onAsyncEvent_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  bool started_ = false;
};

/** Throws a JS Error whose message names `what` and errno's text, with `errno` as its code. */
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& what, int error);

}  // namespace tandem
