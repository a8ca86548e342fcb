// Module entry: loading libibverbs, listing devices with the reason none is usable, the memlock
// limit, and the Context class. No transfer policy lives here.
#include <napi.h>
#include <sys/resource.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "context.h"
#include "verbs-api.h"

namespace tandem {

Napi::Object Init(Napi::Env env, Napi::Object exports);

namespace {

// load(path) -> { loaded, path, message }
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string failure = LoadVerbs(path);
  Napi::Object out = Napi::Object::New(env);
  out.Set("loaded", Napi::Boolean::New(env, failure.empty()));
  out.Set("path", Napi::String::New(env, failure.empty() ? VerbsPath() : path));
  out.Set("message", Napi::String::New(env, failure));
  return out;
}

Napi::Object Verdict(Napi::Env env, const char* reason, const std::string& message, Napi::Array devices) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("reason", Napi::String::New(env, reason));
  out.Set("message", Napi::String::New(env, message));
  out.Set("devices", devices);
  return out;
}

// listDevices() -> { reason: 'ok' | 'library_missing' | 'no_kernel_support' | 'no_device' | 'error', message, devices }
Napi::Value ListDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array devices = Napi::Array::New(env);
  const VerbsApi* verbs = Verbs();
  if (verbs == nullptr) return Verdict(env, "library_missing", "libibverbs is not loaded", devices);
  int count = 0;
  errno = 0;
  ibv_device** list = verbs->get_device_list(&count);
  if (list == nullptr) {
    int error = errno;
    if (error == ENOSYS) {
      return Verdict(env, "no_kernel_support", "ibv_get_device_list: the kernel has no RDMA (InfiniBand verbs) support", devices);
    }
    return Verdict(env, "error", std::string("ibv_get_device_list failed: ") + std::strerror(error), devices);
  }
  for (int i = 0; i < count; i++) {
    Napi::Object device = Napi::Object::New(env);
    device.Set("name", Napi::String::New(env, verbs->get_device_name(list[i])));
    char guid[17];
    std::snprintf(guid, sizeof(guid), "%016llx", static_cast<unsigned long long>(be64toh(verbs->get_device_guid(list[i]))));
    device.Set("guid", Napi::String::New(env, guid));
    devices.Set(static_cast<uint32_t>(i), device);
  }
  verbs->free_device_list(list);
  if (count == 0) return Verdict(env, "no_device", "libibverbs found no RDMA device", devices);
  return Verdict(env, "ok", std::to_string(count) + " RDMA device(s)", devices);
}

// memlockLimit() -> { softBytes, hardBytes }; Infinity where unlimited.
Napi::Value MemlockLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rlimit limit;
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) ThrowErrno(env, "getrlimit(RLIMIT_MEMLOCK) failed", errno);
  auto bytes = [&](rlim_t value) {
    return Napi::Number::New(env, value == RLIM_INFINITY ? INFINITY : static_cast<double>(value));
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("softBytes", bytes(limit.rlim_cur));
  out.Set("hardBytes", bytes(limit.rlim_max));
  return out;
}

// fakeControl(command, value) -> number; only the test library exports the hook.
Napi::Value FakeControl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const VerbsApi* verbs = Verbs();
  if (verbs == nullptr || verbs->fake_control == nullptr) throw Napi::Error::New(env, "the loaded verbs library has no test controls");
  std::string command = info[0].As<Napi::String>().Utf8Value();
  long long value = info[1].As<Napi::Number>().Int64Value();
  return Napi::Number::New(env, verbs->fake_control(command.c_str(), value));
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("load", Napi::Function::New(env, Load));
  exports.Set("listDevices", Napi::Function::New(env, ListDevices));
  exports.Set("memlockLimit", Napi::Function::New(env, MemlockLimit));
  exports.Set("fakeControl", Napi::Function::New(env, FakeControl));
  exports.Set("Context", Context::Define(env));
  return exports;
}

}  // namespace tandem

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return tandem::Init(env, exports); }

NODE_API_MODULE(tandem_verbs, InitModule)
