{
  "targets": [
    {
      "target_name": "tandem_verbs",
      "sources": ["src/addon.cc", "src/context.cc", "src/queue-pair.cc", "src/verbs-api.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-ldl"]
    },
    {
      "target_name": "fake_verbs",
      "type": "shared_library",
      "sources": ["fake/fake-verbs.cc", "fake/fake-data-path.cc"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=default"],
      "product_extension": "so"
    }
  ]
}
