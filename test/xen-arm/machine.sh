# The arm64 rig's machine (shared by build.sh, which dumps QEMU's device tree for exactly this
# machine, and run.sh). RAM is 0x40000000 up; the kernel and the one initramfs all three domains
# boot are loaded once and named by each domain's modules.
QMACHINE="-M virt,virtualization=on,gic-version=3 -cpu cortex-a57 -m 3072 -smp 2 -nographic"
XEN_ARGS="console=dtuart xsm=dummy dom0_mem=768M dom0_max_vcpus=1 loglvl=all guest_loglvl=all"
DOM0_ARGS="console=hvc0 earlycon=xen rdinit=/init role=dom0"
KERNEL_AT=0x50000000
INITRD_AT=0x58000000
DOMU_MEM=0xC0000 # KiB
