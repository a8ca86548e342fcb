#include "verbs-api.h"

#include <dlfcn.h>

#include <cstring>

namespace tandem {
namespace {

VerbsApi api;
bool loaded = false;
std::string loadedPath;

template <typename T>
bool Resolve(void* handle, const char* name, T& slot, std::string& missing) {
  slot = reinterpret_cast<T>(dlsym(handle, name));
  if (slot == nullptr) {
    if (!missing.empty()) missing += ", ";
    missing += name;
    return false;
  }
  return true;
}

}  // namespace

std::string LoadVerbs(const std::string& path) {
  if (loaded) {
    if (path == loadedPath) return "";
    return "libibverbs is already loaded from " + loadedPath + " in this process; cannot switch to " + path;
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return std::string("cannot load ") + path + ": " + (why != nullptr ? why : "unknown dlopen error");
  }
  VerbsApi table{};
  std::string missing;
  Resolve(handle, "ibv_get_device_list", table.get_device_list, missing);
  Resolve(handle, "ibv_free_device_list", table.free_device_list, missing);
  Resolve(handle, "ibv_get_device_name", table.get_device_name, missing);
  Resolve(handle, "ibv_get_device_guid", table.get_device_guid, missing);
  Resolve(handle, "ibv_open_device", table.open_device, missing);
  Resolve(handle, "ibv_close_device", table.close_device, missing);
  Resolve(handle, "ibv_query_port", table.query_port, missing);
  Resolve(handle, "ibv_query_gid", table.query_gid, missing);
  Resolve(handle, "ibv_alloc_pd", table.alloc_pd, missing);
  Resolve(handle, "ibv_dealloc_pd", table.dealloc_pd, missing);
  Resolve(handle, "ibv_reg_mr", table.reg_mr, missing);
  Resolve(handle, "ibv_dereg_mr", table.dereg_mr, missing);
  Resolve(handle, "ibv_create_comp_channel", table.create_comp_channel, missing);
  Resolve(handle, "ibv_destroy_comp_channel", table.destroy_comp_channel, missing);
  Resolve(handle, "ibv_create_cq", table.create_cq, missing);
  Resolve(handle, "ibv_destroy_cq", table.destroy_cq, missing);
  Resolve(handle, "ibv_get_cq_event", table.get_cq_event, missing);
  Resolve(handle, "ibv_ack_cq_events", table.ack_cq_events, missing);
  Resolve(handle, "ibv_create_qp", table.create_qp, missing);
  Resolve(handle, "ibv_modify_qp", table.modify_qp, missing);
  Resolve(handle, "ibv_query_qp", table.query_qp, missing);
  Resolve(handle, "ibv_destroy_qp", table.destroy_qp, missing);
  Resolve(handle, "ibv_get_async_event", table.get_async_event, missing);
  Resolve(handle, "ibv_ack_async_event", table.ack_async_event, missing);
  Resolve(handle, "ibv_wc_status_str", table.wc_status_str, missing);
  Resolve(handle, "ibv_event_type_str", table.event_type_str, missing);
  if (!missing.empty()) {
    dlclose(handle);
    return path + " lacks " + missing;
  }
  table.fake_control = reinterpret_cast<int (*)(const char*, long long)>(dlsym(handle, "tandem_fake_verbs_control"));
  // The handle stays open for the life of the process: memory regions may outlive every context.
  api = table;
  loaded = true;
  loadedPath = path;
  return "";
}

const VerbsApi* Verbs() { return loaded ? &api : nullptr; }

const std::string& VerbsPath() { return loadedPath; }

int QueryPort(ibv_context* context, uint8_t port, ibv_port_attr* attr) {
  verbs_context* extended = verbs_get_ctx_op(context, query_port);
  if (extended != nullptr) return extended->query_port(context, port, attr, sizeof(*attr));
  std::memset(attr, 0, sizeof(*attr));
  return api.query_port(context, port, reinterpret_cast<_compat_ibv_port_attr*>(attr));
}

}  // namespace tandem
