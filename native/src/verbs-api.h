// The libibverbs entry points the addon uses, resolved at run time with dlopen/dlsym so the addon
// loads on machines without the library. Only exported functions are resolved here; the data-path
// calls that verbs.h defines inline (post_send, post_recv, poll_cq, req_notify_cq) go through the
// context's ops table, which the library (or a provider) fills.
#pragma once

#include <infiniband/verbs.h>

#include <string>

namespace tandem {

struct VerbsApi {
  ibv_device** (*get_device_list)(int*);
  void (*free_device_list)(ibv_device**);
  const char* (*get_device_name)(ibv_device*);
  __be64 (*get_device_guid)(ibv_device*);
  ibv_context* (*open_device)(ibv_device*);
  int (*close_device)(ibv_context*);
  int (*query_port)(ibv_context*, uint8_t, struct _compat_ibv_port_attr*);
  int (*query_gid)(ibv_context*, uint8_t, int, ibv_gid*);
  ibv_pd* (*alloc_pd)(ibv_context*);
  int (*dealloc_pd)(ibv_pd*);
  ibv_mr* (*reg_mr)(ibv_pd*, void*, size_t, int);
  int (*dereg_mr)(ibv_mr*);
  ibv_comp_channel* (*create_comp_channel)(ibv_context*);
  int (*destroy_comp_channel)(ibv_comp_channel*);
  ibv_cq* (*create_cq)(ibv_context*, int, void*, ibv_comp_channel*, int);
  int (*destroy_cq)(ibv_cq*);
  int (*get_cq_event)(ibv_comp_channel*, ibv_cq**, void**);
  void (*ack_cq_events)(ibv_cq*, unsigned int);
  ibv_qp* (*create_qp)(ibv_pd*, ibv_qp_init_attr*);
  int (*modify_qp)(ibv_qp*, ibv_qp_attr*, int);
  int (*query_qp)(ibv_qp*, ibv_qp_attr*, int, ibv_qp_init_attr*);
  int (*destroy_qp)(ibv_qp*);
  int (*get_async_event)(ibv_context*, ibv_async_event*);
  void (*ack_async_event)(ibv_async_event*);
  const char* (*wc_status_str)(ibv_wc_status);
  const char* (*event_type_str)(ibv_event_type);
  // Present only in the test library; lets tests inject faults through the addon.
  int (*fake_control)(const char*, long long);
};

/** Loads `path` once per process; returns an empty string on success, else why it failed. */
std::string LoadVerbs(const std::string& path);

/** The table, or nullptr while no library is loaded. */
const VerbsApi* Verbs();

/** The path the library was loaded from, empty while none is. */
const std::string& VerbsPath();

/** ibv_query_port as verbs.h defines it inline, with the exported symbol resolved at run time. */
int QueryPort(ibv_context* context, uint8_t port, ibv_port_attr* attr);

}  // namespace tandem
