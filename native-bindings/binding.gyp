{
  "targets": [
    {
      "target_name": "tapwall",
      "sources": ["src/tapwall.c", "src/yaml.c", "src/text.c"],
      "libraries": ["-lyaml"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
