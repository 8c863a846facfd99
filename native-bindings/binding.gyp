{
  "targets": [
    {
      "target_name": "tapwall",
      "sources": ["src/tapwall.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
