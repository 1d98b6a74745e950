# Runs the project's CI (.ci/run, the same script CI runs) on a clean Debian bookworm with Node 20,
# as package.json's engines asks:
#   docker build -t xen-vchan-ci . && docker run --rm --privileged xen-vchan-ci
# --privileged because the prebuilt binaries are compiled in a Debian bullseye root (debootstrap,
# bind mounts) and the real-Xen rig boots Xen under QEMU. .ci/run installs the Debian packages.
FROM node:20-bookworm
ENV CI=true DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY . .
CMD ["bash", ".ci/run"]
