# Sourced by the rig's scripts: which Debian kernel dom0 and the domU run, and the cache that goes
# with it. XEN_RIG_KERNEL=6.12 (the default: bookworm-security's 6.12, which has
# IOCTL_EVTCHN_BIND_STATIC) or 6.1 (bookworm's own kernel). Sets kmeta, the metapackage whose
# dependency is the kernel package, and XEN_RIG_CACHE (default ~/.cache/xen-vchan-rig/<kernel>).
XEN_RIG_KERNEL=${XEN_RIG_KERNEL:-6.12}
case "$XEN_RIG_KERNEL" in
  6.12) kmeta=linux-image-6.12-amd64 ;;
  6.1) kmeta=linux-image-amd64 ;;
  *) echo "rig: XEN_RIG_KERNEL must be 6.12 or 6.1, not '$XEN_RIG_KERNEL'" >&2; exit 2 ;;
esac
export XEN_RIG_KERNEL
export XEN_RIG_CACHE=${XEN_RIG_CACHE:-$HOME/.cache/xen-vchan-rig/$XEN_RIG_KERNEL}
