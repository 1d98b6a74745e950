{
  # Two addons from the same src/*.cc:
  #   xen_vchan_mock  always, against the mock libraries in native/mock (built first by scripts/install.js)
  #   xen_vchan_real  always (XEN_VCHAN_REAL=0 or XEN_VCHAN_ONLY=mock leaves it out); needs no Xen
  #                   package to build, and loads on any Xen from 4.14 on
  # XEN_VCHAN_SANITIZE=1 builds both with AddressSanitizer + UndefinedBehaviorSanitizer.
  "variables": {
    "real%": "<!(node scripts/gyp-config.js real)",
    "sanitize%": "<!(node scripts/gyp-config.js sanitize)",
    "mock_lib%": "<!(node scripts/gyp-config.js mock-lib)",
    "mock%": "<!(node scripts/gyp-config.js mock)",
  },
  "target_defaults": {
    "sources": ["src/addon.cc", "src/async.cc", "src/errors.cc", "src/handles.cc", "src/poller.cc", "src/evtchn.cc", "src/gnttab.cc",
                "src/xenstore.cc", "src/vchan.cc", "src/xenctrl.cc", "src/pump.cc"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    # SWALLOW_UNTHROWABLE: an error raised while a worker is being torn down cannot be thrown; drop it
    # rather than abort the process.
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
    "conditions": [
      ["sanitize==1", {
        "cflags_cc": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"],
        "ldflags": ["-fsanitize=address,undefined"],
      }],
    ],
  },
  "targets": [
    {
      "target_name": "xen_vchan_mock",
      "conditions": [["mock==0", {"type": "none"}]],
      "defines": ["XEN_VCHAN_MOCK"],
      "sources": ["src/mock.cc"],
      "include_dirs": ["native/include", "native/mock/include"],
      "libraries": [
        "-L<(module_root_dir)/<(mock_lib)",
        "-l:libxenvchan.so.4.17", "-l:libxenevtchn.so.1", "-l:libxengnttab.so.1",
        "-l:libxenstore.so.4", "-l:libxenmock.so.1", "-l:libxenctrl.so.4.17",
      ],
      # Found relative to the addon: prebuilds/<platform>-<arch>/mock/lib next to a prebuilt one
      # (scripts/prebuild.sh), native/mock/build/lib from build/Release.
      "ldflags": ["-Wl,-rpath,'$$ORIGIN/mock/lib:$$ORIGIN/../../<(mock_lib)'"],
    },
    {
      # Runs on every Xen release from 4.14 on without a rebuild: our own libxenvchan (native/vchan,
      # wire-compatible with Xen's) is compiled in, libxenstore (libxenstore.so.4 or .so.3.0) is found
      # at run time (src/xenstore_loader.cc), and libxenevtchn.so.1 / libxengnttab.so.1, whose soname
      # and symbol versions Xen keeps stable, are linked. Built against Xen's API as native/include
      # declares it and linked against the mock's libraries of the same sonames and symbol versions, so
      # no Xen development package is needed; nothing here points at the mock at run time (no rpath).
      "target_name": "xen_vchan_real",
      "conditions": [["real==0", {"type": "none"}]],
      "sources": ["src/xenstore_loader.cc", "native/vchan/vchan.c"],
      "include_dirs": ["native/include"],
      "defines": ["VCHAN_EXPORT="],
      "cflags": ["-fvisibility=hidden"],
      "cflags_c": ["-std=gnu11"],
      "cflags_cc": ["-fvisibility=hidden"],
      "libraries": [
        "-L<(module_root_dir)/<(mock_lib)", "-Wl,-rpath-link,<(module_root_dir)/<(mock_lib)",
        "-l:libxenevtchn.so.1", "-l:libxengnttab.so.1", "-ldl",
      ],
    },
  ],
}
